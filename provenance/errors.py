"""Typed errors: every failure names its cause and the fix (never a bare assert)."""


class ProvenanceError(Exception):
    """Base class for every error this package raises on purpose."""


class UnsupportedLayerError(ProvenanceError):
    """A trainable parameter lives in a module no attribution rule covers."""


class UnsupportedOptimizerError(ProvenanceError):
    """The optimizer (or one of its options) has no exact linearization here."""


class TargetError(ProvenanceError):
    """A target text is empty, too long for the context, or otherwise unusable."""


class BatchError(ProvenanceError):
    """A training batch is empty or malformed."""


class NonFiniteLossError(ProvenanceError):
    """The training or target loss became NaN or Inf."""


class CorpusError(ProvenanceError):
    """The corpus cannot be ingested (empty, unreadable, all duplicates...)."""


class RunDirectoryError(ProvenanceError):
    """A run directory is missing, incomplete, corrupt or of another format version."""


class RunMismatchError(ProvenanceError):
    """A resumed or replayed run differs from the recorded one (config, data or loss curve)."""


class VerificationError(ProvenanceError):
    """`verify` found a file whose hash or values differ from the record."""


class EvidenceIndexError(ProvenanceError):
    """The evidence index is missing or stale (its corpus hash no longer matches)."""


class TokenizerError(ProvenanceError):
    """A tokenizer file is missing, unreadable or lacks the <|endoftext|> token."""


class ReportError(ProvenanceError):
    """A report cannot be built: a bad option, an unreadable target list, or no usable font."""


class CurationError(ProvenanceError):
    """`curate` cannot build a corpus: a bad --drop spec, no values to rank by, or an existing output."""


class SketchMismatchError(ProvenanceError):
    """Stored gradient sketches do not belong to this model/run or projection settings (docs/posthoc.md)."""


class ReplayWorkerError(ProvenanceError):
    """A worker process of a segment-parallel replay crashed or failed unexpectedly (its error is quoted)."""
