"""Training tasks (model + loss + batches) per stage; `build_task(cfg)` picks one by `cfg.task`."""
