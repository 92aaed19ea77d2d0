"""hf_tune: fine-tuning recipes for pretrained encoders on the Hugging Face stack."""

__version__ = "0.1.0"
