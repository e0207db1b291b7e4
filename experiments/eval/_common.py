"""Settings shared by the reconstruction and generation eval configs."""
import ml_collections


def networks(variant: str) -> ml_collections.ConfigDict:
    """Local weights of the metric networks ('' = a frozen RANDOM stand-in, figures then meaningless)."""
    return ml_collections.ConfigDict(dict(
        lpips_backbone="",   # torchvision VGG16 state dict (features.{i}.weight/bias) as .safetensors or .npz
        lpips_linear="",     # the lpips package's weights/v0.1/vgg.pth tensors (lin{k}.model.1.weight) as .safetensors or .npz
        dinov2="",           # HF-format dinov2-with-registers-large directory (FD / KD features)
        clip="",             # HF-format CLIPModel directory, e.g. openai/clip-vit-large-patch14 (CLIP score)
    ))


def base(variant: str, demo_out: str = "outputs/demo") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.networks = networks(variant)
    c.grid_views = 4             # rows (views) of each asset's picture grid
    if variant == "tiny":        # the demo's held-out assets (run `trellis-jax demo` first) at its render size
        c.data = f"{demo_out}/data/heldout"
        c.num_assets = -1        # -1: every record of the dataset
        c.num_views = 4          # the first stored views of each record (-1: all)
        c.resolution = 64
        c.background = (1.0, 1.0, 1.0)
    elif variant == "toys4k":    # the paper's evaluation set (the paper's Tables 1-2): held-out Toys4k, 512² renders
        c.data = ""              # a `build-data` dataset of the Toys4k assets (reference render settings)
        c.num_assets = -1
        c.num_views = -1         # the paper's metric views were not released: every stored view (150 by the reference renderer)
        c.resolution = 512
        c.background = (1.0, 1.0, 1.0)  # not released either
    else:
        raise KeyError(f"unknown eval variant {variant!r} (tiny, toys4k)")
    return c
