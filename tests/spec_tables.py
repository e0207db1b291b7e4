"""Official state-dict {key: shape} tables rebuilt from the reference's released key tables
(docs/reference_facts.md#checkpoints), independently of the Flax models: the tests compare the models' templates
against these (keys, shapes and counts)."""
from __future__ import annotations

import numpy as np


def _linear(t, name, i, o):
    t[f"{name}.weight"], t[f"{name}.bias"] = (o, i), (o,)


def _conv(t, name, i, o, k, sparse):
    t[f"{name}.weight"] = (o, k, k, k, i) if sparse else (o, i, k, k, k)
    t[f"{name}.bias"] = (o,)


def _norm(t, name, c):
    t[f"{name}.weight"], t[f"{name}.bias"] = (c,), (c,)


def _dit_block(t, p, C, Cc, H, qk_self, qk_cross):
    Dh = C // H
    _linear(t, f"{p}.self_attn.to_qkv", C, 3 * C)
    _linear(t, f"{p}.self_attn.to_out", C, C)
    if qk_self:
        t[f"{p}.self_attn.q_rms_norm.gamma"] = t[f"{p}.self_attn.k_rms_norm.gamma"] = (H, Dh)
    _linear(t, f"{p}.cross_attn.to_q", C, C)
    _linear(t, f"{p}.cross_attn.to_kv", Cc, 2 * C)
    _linear(t, f"{p}.cross_attn.to_out", C, C)
    if qk_cross:
        t[f"{p}.cross_attn.q_rms_norm.gamma"] = t[f"{p}.cross_attn.k_rms_norm.gamma"] = (H, Dh)
    _linear(t, f"{p}.mlp.mlp.0", C, 4 * C)
    _linear(t, f"{p}.mlp.mlp.2", 4 * C, C)
    _norm(t, f"{p}.norm2", C)
    _linear(t, f"{p}.adaLN_modulation.1", C, 6 * C)


def ss_flow(C, Cc, N, H, qk_cross=False, res=16, cin=8):
    t = {}
    _linear(t, "t_embedder.mlp.0", 256, C)
    _linear(t, "t_embedder.mlp.2", C, C)
    t["pos_emb"] = (res**3, C)
    _linear(t, "input_layer", cin, C)
    _linear(t, "out_layer", C, cin)
    for i in range(N):
        _dit_block(t, f"blocks.{i}", C, Cc, H, True, qk_cross)
    return t


def _res_block(t, p, cin, cout, C):
    _norm(t, f"{p}.norm1", cin)
    _conv(t, f"{p}.conv1.conv", cin, cout, 3, True)
    _conv(t, f"{p}.conv2.conv", cout, cout, 3, True)
    _linear(t, f"{p}.emb_layers.1", C, 2 * cout)
    if cin != cout:
        _linear(t, f"{p}.skip_connection", cin, cout)


def slat_flow(C, Cc, N, H, io=128, n_io=2):
    t = {}
    _linear(t, "t_embedder.mlp.0", 256, C)
    _linear(t, "t_embedder.mlp.2", C, C)
    _linear(t, "input_layer", 8, io)
    for k in range(n_io):
        _res_block(t, f"input_blocks.{k}", io, C if k == n_io - 1 else io, C)
    for k in range(n_io):
        _res_block(t, f"out_blocks.{k}", 2 * C if k == 0 else 2 * io, io, C)
    _linear(t, "out_layer", io, 8)
    for i in range(N):
        _dit_block(t, f"blocks.{i}", C, Cc, H, True, False)
    return t


def _swin_trunk(t, cin, C=768, N=12):
    _linear(t, "input_layer", cin, C)
    for i in range(N):
        _linear(t, f"blocks.{i}.attn.to_qkv", C, 3 * C)
        _linear(t, f"blocks.{i}.attn.to_out", C, C)
        _linear(t, f"blocks.{i}.mlp.mlp.0", C, 4 * C)
        _linear(t, f"blocks.{i}.mlp.mlp.2", 4 * C, C)


def slat_enc():
    t = {}
    _swin_trunk(t, 1024)
    _linear(t, "out_layer", 768, 16)
    return t


def slat_dec_gs():
    t = {}
    _swin_trunk(t, 8)
    _linear(t, "out_layer", 768, 32 * (3 + 3 + 3 + 4 + 1))
    t["offset_perturbation"] = (32, 3)
    return t


def slat_dec_rf():
    t = {}
    _swin_trunk(t, 8)
    _linear(t, "out_layer", 768, 16 * 3 * 8 + 16 + 16 * 3)
    return t


def slat_dec_mesh():
    t = {}
    _swin_trunk(t, 8)
    for k, (cin, cout) in enumerate([(768, 192), (192, 96)]):
        p = f"upsample.{k}"
        _norm(t, f"{p}.act_layers.0", cin)
        _conv(t, f"{p}.out_layers.0.conv", cin, cout, 3, True)
        _norm(t, f"{p}.out_layers.1", cout)
        _conv(t, f"{p}.out_layers.3.conv", cout, cout, 3, True)
        _conv(t, f"{p}.skip_connection.conv", cin, cout, 1, True)
    _linear(t, "out_layer", 96, 8 + 24 + 21 + 48)
    return t


def _ss_res(t, p, c):
    _norm(t, f"{p}.norm1", c)
    _norm(t, f"{p}.norm2", c)
    _conv(t, f"{p}.conv1", c, c, 3, False)
    _conv(t, f"{p}.conv2", c, c, 3, False)


def ss_enc():
    t = {}
    _conv(t, "input_layer", 1, 32, 3, False)
    chans = [32, 128, 512]
    i = 0
    for lvl, c in enumerate(chans):
        for _ in range(2):
            _ss_res(t, f"blocks.{i}", c)
            i += 1
        if lvl < 2:  # DownsampleBlock3d: strided 2³ conv
            _conv(t, f"blocks.{i}.conv", c, chans[lvl + 1], 2, False)
            i += 1
    for j in range(2):
        _ss_res(t, f"middle_block.{j}", 512)
    _norm(t, "out_layer.0", 512)
    _conv(t, "out_layer.2", 512, 16, 3, False)
    return t


def ss_dec():
    t = {}
    _conv(t, "input_layer", 8, 512, 3, False)
    for j in range(2):
        _ss_res(t, f"middle_block.{j}", 512)
    chans = [512, 128, 32]
    i = 0
    for lvl, c in enumerate(chans):
        for _ in range(2):
            _ss_res(t, f"blocks.{i}", c)
            i += 1
        if lvl < 2:  # UpsampleBlock3d: conv to 8·c_out channels + 3D pixel shuffle
            _conv(t, f"blocks.{i}.conv", c, 8 * chans[lvl + 1], 3, False)
            i += 1
    _norm(t, "out_layer.0", 32)
    _conv(t, "out_layer.2", 32, 1, 3, False)
    return t


SPEC_TABLES = {  # checkpoint name -> builder
    "ss_enc_conv3d_16l8_fp16": ss_enc,
    "ss_dec_conv3d_16l8_fp16": ss_dec,
    "ss_flow_img_dit_L_16l8_fp16": lambda: ss_flow(1024, 1024, 24, 16),
    "ss_flow_txt_dit_B_16l8_fp16": lambda: ss_flow(768, 768, 12, 12),
    "ss_flow_txt_dit_L_16l8_fp16": lambda: ss_flow(1024, 768, 24, 16),
    "ss_flow_txt_dit_XL_16l8_fp16": lambda: ss_flow(1280, 768, 28, 16, qk_cross=True),
    "slat_flow_img_dit_L_64l8p2_fp16": lambda: slat_flow(1024, 1024, 24, 16),
    "slat_flow_txt_dit_B_64l8p2_fp16": lambda: slat_flow(768, 768, 12, 12),
    "slat_flow_txt_dit_L_64l8p2_fp16": lambda: slat_flow(1024, 768, 24, 16),
    "slat_flow_txt_dit_XL_64l8p2_fp16": lambda: slat_flow(1280, 768, 28, 16, io=256, n_io=3),
    "slat_enc_swin8_B_64l8_fp16": slat_enc,
    "slat_dec_gs_swin8_B_64l8gs32_fp16": slat_dec_gs,
    "slat_dec_rf_swin8_B_64l8r16_fp16": slat_dec_rf,
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": slat_dec_mesh,
}


def count(table: dict) -> int:
    return sum(int(np.prod(s)) for s in table.values())
