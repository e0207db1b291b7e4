"""The torch-free .pth reader on files written in torch.save's zip and legacy layouts."""
import pickle

import numpy as np
import pytest

from tests import torch_pickle_writer as W
from trellis_jax.checkpoints.torch_pth import TorchFileError, read_torch_state_dict


@pytest.mark.parametrize("legacy", [False, True])
def test_reads_shared_strided_and_typed_tensors(tmp_path, legacy):
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(20).astype(np.float32)
    s = W.Storage("0", flat)
    state = {
        "a.weight": W.Tensor(s, 0, (2, 3), (3, 1)),
        "a.weight_t": W.Tensor(s, 0, (3, 2), (1, 3)),          # a transposed view of the same storage
        "b.bias": W.Tensor(s, 6, (4,), (1,)),                   # an offset into it
        "half": W.Tensor(W.Storage("1", np.arange(5, dtype=np.float16)), 0, (5,), (1,)),
        "steps": W.Tensor(W.Storage("2", np.array([7], np.int64)), 0, (), ()),
    }
    p = tmp_path / "m.pth"
    W.save(state, p, legacy)
    out = read_torch_state_dict(p)
    np.testing.assert_array_equal(out["a.weight"], flat[:6].reshape(2, 3))
    np.testing.assert_array_equal(out["a.weight_t"], flat[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(out["b.bias"], flat[6:10])
    assert out["half"].dtype == np.float16 and out["half"].tolist() == [0, 1, 2, 3, 4]
    assert out["steps"] == 7


def test_refuses_foreign_globals_and_names_the_file(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        for obj in (W.LEGACY_MAGIC, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true')
    with pytest.raises(TorchFileError, match=r"evil\.pth.*refusing to load global os\.system"):
        read_torch_state_dict(p)
    (tmp_path / "short.pth").write_bytes(b"\x80\x02")
    with pytest.raises(TorchFileError, match="short.pth"):
        read_torch_state_dict(tmp_path / "short.pth")
