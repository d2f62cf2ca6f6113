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
from importlib import import_module

# torch is imported on first use, so `thresher.scorers.models.stages` (and the stage
# registry) work on an install without the `models` extra
_WHERE = {
    "DocumentTooLargeError": "engine", "Engine": "engine", "EngineStats": "engine", "pack_batches": "engine",
    "resolve_compute_dtype": "engine", "resolve_device": "engine",
    "CheckpointError": "loading", "EncoderHead": "loading", "LoadedModel": "loading",
    "UnsafeCheckpointError": "loading", "detect_kind": "loading", "load_encoder_head": "loading",
    "load_model": "loading", "save_encoder_head": "loading",
    "TASKS": "tasks", "CausalLMLoss": "tasks", "EncoderScore": "tasks", "Generate": "tasks",
    "ModelTask": "tasks", "build_task": "tasks",
}


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'thresher.scorers.models' has no attribute {name!r}")
    return getattr(import_module(f"thresher.scorers.models.{mod}"), name)


__all__ = [
    "build_task", "TASKS", "ModelTask", "CausalLMLoss", "EncoderScore", "Generate",
    "Engine", "EngineStats", "pack_batches", "resolve_device", "resolve_compute_dtype", "DocumentTooLargeError",
    "load_model", "detect_kind", "LoadedModel", "EncoderHead", "save_encoder_head", "load_encoder_head",
    "CheckpointError", "UnsafeCheckpointError",
]
