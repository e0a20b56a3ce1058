"""provenance: In-Run Data Shapley attribution for language models.

Which training documents produced this output, and how much did each contribute?
"""

__version__ = "0.1.0"
RUN_FORMAT_VERSION = 1
