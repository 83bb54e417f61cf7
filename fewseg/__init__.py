"""fewseg: few-shot semantic segmentation by meta-learning."""

__version__ = "0.1.0"
