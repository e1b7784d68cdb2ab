"""Keras layers of the OpenVision encoder and decoders."""

from keras_ov2.layers.attention import MultiHeadSelfAttention
from keras_ov2.layers.class_token import ClassToken
from keras_ov2.layers.patch_embedding import PatchEmbedding
from keras_ov2.layers.sincos_position_embedding import SinCos2DPositionEmbedding
from keras_ov2.layers.sincos_position_embedding import sincos_2d_table
from keras_ov2.layers.transformer_block import TransformerBlock
from keras_ov2.layers.image_normalization import ImageNormalization
from keras_ov2.layers.visual_token_masking import VisualTokenMasking
from keras_ov2.layers.parallel_prediction import ParallelPredictionMasking
