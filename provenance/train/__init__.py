"""Training with attribution: train, resume, replay-attribute, generate, verify, demo.

    from provenance.train import train, attribute, TargetSpec
    run = train("my_corpus/", "attribution_runs/r1", targets=[TargetSpec("t1", "prompt", "output")])
    values = attribute(run.path, [TargetSpec("t2", "", "an output generated later")])
"""

from provenance.train.generate import SamplingConfig, generate
from provenance.train.replay import attribute
from provenance.train.targets import TargetSpec, read_targets_jsonl
from provenance.train.trainer import resume, train

__all__ = ["SamplingConfig", "TargetSpec", "attribute", "generate", "read_targets_jsonl", "resume", "train"]
