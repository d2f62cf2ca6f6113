"""Model scorers: one engine, three tasks (framework-free; no Beam import).

    from thresher.scorers.models import build_task
    task = build_task("causal_lm_loss", "/models/my-llama", device="auto")
    cols = task(["some text", "more text"])        # {"lm_loss_sum": pa.Array, ...}
    table = task.score_table(table, text_column="text")
    print(task.stats.as_dict())                     # docs/s, tokens/s, padding waste, OOMs

Modules: ``loading`` (safe checkpoint loading), ``engine`` (token-budget
batching, device/dtype, OOM back-off, stats), ``tasks`` (``causal_lm_loss``,
``encoder_score``, ``generate``). Column names live in ``schemas/models.py``.
"""
from thresher.scorers.models.engine import (
                                   DocumentTooLargeError,
                                   Engine,
                                   EngineStats,
                                   pack_batches,
                                   resolve_compute_dtype,
                                   resolve_device,
)
from thresher.scorers.models.loading import (
                                   CheckpointError,
                                   EncoderHead,
                                   LoadedModel,
                                   UnsafeCheckpointError,
                                   detect_kind,
                                   load_encoder_head,
                                   load_model,
                                   save_encoder_head,
)
from thresher.scorers.models.tasks import (
                                   TASKS,
                                   CausalLMLoss,
                                   EncoderScore,
                                   Generate,
                                   ModelTask,
                                   build_task,
)

__all__ = [
    "build_task", "TASKS", "ModelTask", "CausalLMLoss", "EncoderScore", "Generate",
    "Engine", "EngineStats", "pack_batches", "resolve_device", "resolve_compute_dtype", "DocumentTooLargeError",
    "load_model", "detect_kind", "LoadedModel", "EncoderHead", "save_encoder_head", "load_encoder_head",
    "CheckpointError", "UnsafeCheckpointError",
]
