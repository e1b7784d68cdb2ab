"""A LLaVA-style vision-language model: an OpenVision encoder as the vision
tower of any KerasHub causal language model."""
