"""The SS-VAERR network (network.py), its architecture registry (registry.py), its checkpoints
(checkpoint.py: the format; catalog.py: named checkpoints; encoder_weights.py: encoder import
and export) and the authors' weights (authors.py), shared by inference and training.

Batch inference in three calls:
    model, ckpt = load_model(cfg.model.checkpoint, cfg.model, storage_options=...)
    out = predict(model, crops_uint8_BxTx96x96, lengths, dtype=cfg.model.dtype)
    # out["arousal"], out["valence"]: [B, T] float32 in [-1, 1]; tag rows with
    # ckpt.model_id and ckpt.untrained.
"""

from pipeline.model.catalog import read_catalog, resolve_checkpoint
from pipeline.model.checkpoint import (
    Checkpoint,
    cached_model_id,
    checkpoint_from_model,
    default_preprocessing,
    init_checkpoint,
    load_checkpoint,
    load_model,
    model_id,
    parameter_count,
    preprocessing_from_config,
    read_weights_file,
    save_checkpoint,
)
from pipeline.model.encoder_weights import (
    EncoderLoadReport,
    encoder_checkpoint,
    load_encoder_weights,
)
from pipeline.model.network import (
    SSVAERR,
    Encoder,
    SSVAERROutput,
    lengths_to_mask,
    predict,
    uniform_bin_centres,
)
from pipeline.model.registry import (
    ARCHS,
    FINETUNE_MODES,
    apply_finetune_mode,
    arch_spec,
    build_encoder,
    build_model,
    list_models,
)

__all__ = [
    "ARCHS",
    "FINETUNE_MODES",
    "SSVAERR",
    "Checkpoint",
    "Encoder",
    "EncoderLoadReport",
    "SSVAERROutput",
    "apply_finetune_mode",
    "arch_spec",
    "build_encoder",
    "build_model",
    "cached_model_id",
    "checkpoint_from_model",
    "encoder_checkpoint",
    "default_preprocessing",
    "init_checkpoint",
    "lengths_to_mask",
    "list_models",
    "load_checkpoint",
    "load_encoder_weights",
    "load_model",
    "model_id",
    "parameter_count",
    "predict",
    "preprocessing_from_config",
    "read_catalog",
    "read_weights_file",
    "resolve_checkpoint",
    "save_checkpoint",
    "uniform_bin_centres",
]
