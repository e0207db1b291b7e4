"""Small, fast data-pipeline settings (tests, the end-to-end job): few views, low resolution, tiny encoder."""
from data_pipeline.config import get_config as _reference


def get_config():
    c = _reference()
    c.num_views = 8
    c.resolution = 64
    c.num_cond_views = 4
    c.cond_resolution = 64
    c.store_views = 4
    c.encoder = "tiny"
    c.encoder_image_size = 70  # 5x5 patch grid
    c.batch_views = 4
    c.voxel_bucket = 1024
    c.shard_size = 4
    c.surface_points = 2048
    return c
