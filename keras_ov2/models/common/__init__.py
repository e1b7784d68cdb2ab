"""What both OpenVision versions use: the ViT encoder, its image converter
and classifier, the tokenizer, text blocks, caption loss, optimizer recipe,
layout maps."""
