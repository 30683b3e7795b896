"""SSAST: self-supervised audio spectrogram transformer (Gong et al., AAAI 2022).

Pure PyTorch (timm only as the reference of a test). Never imports ray, pipeline or jobs.
"""

from ssast.adapters import AdapterConfig, adapter_parameter_names, add_adapters, merge_lora
from ssast.checkpoint import (
    load_checkpoint,
    load_original_checkpoint,
    load_original_classifier,
    save_checkpoint,
)
from ssast.classifier import SSASTClassifier
from ssast.config import GEOMETRIES, SIZES, SSASTConfig
from ssast.masking import sample_cluster_mask, sample_random_mask
from ssast.model import SSAST
from ssast.original import classifier_to_original_state_dict

__all__ = [
    "AdapterConfig",
    "GEOMETRIES",
    "SIZES",
    "SSAST",
    "SSASTClassifier",
    "SSASTConfig",
    "adapter_parameter_names",
    "add_adapters",
    "classifier_to_original_state_dict",
    "load_checkpoint",
    "load_original_checkpoint",
    "load_original_classifier",
    "merge_lora",
    "sample_cluster_mask",
    "sample_random_mask",
    "save_checkpoint",
]
