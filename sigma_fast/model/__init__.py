"""SIGMA's modules: frozen encoders and the trainable head."""
from sigma_fast.model.backbone import DinoBackbone
from sigma_fast.model.decoder import MaskDecoder
from sigma_fast.model.difference import DifferenceBranch
from sigma_fast.model.refinement import BiAttentionBlock
from sigma_fast.model.sigma import SigmaModel
from sigma_fast.model.text import TextEncoder

__all__ = ["BiAttentionBlock", "DifferenceBranch", "DinoBackbone", "MaskDecoder", "SigmaModel", "TextEncoder"]
