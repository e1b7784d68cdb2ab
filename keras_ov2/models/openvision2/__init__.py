"""OpenVision 2: the captioner that pretrains the encoder by captioning alone."""
