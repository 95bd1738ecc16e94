"""The vanishing/exploding-gradient study, at a test-sized depth."""
import math

import numpy as np

from fastgd.train import study

X, y = study.make_classification(n=128, n_features=16, seed=0)


def test_init_norms_vanish_explode_and_stay_flat():
    norms = study.init_study(X, y, depth=8, width=64)
    small = norms["tanh, std 0.05 (too small)"]
    large = norms["tanh, std 1.0 (too large)"]
    xavier = norms["tanh, Xavier"]
    he = norms["relu, He"]
    assert max(small) < 1e-2 * min(xavier)          # vanished everywhere
    assert large[0] > 100 * large[-1]               # blows up towards the input
    assert large[0] > 100 * xavier[0]
    for flat in (xavier, he):                       # Xavier/He: within a factor 10 across layers
        assert max(flat) < 10 * min(flat)
    assert max(norms["relu, std 0.3 (too large)"]) > 30 * max(he)   # relu: large in every layer


def test_clipping_keeps_too_large_init_from_diverging():
    runs = study.training_study(X, y, depth=8, width=64, epochs=3, batch_size=32)
    no_clip, clip, he = runs.values()
    assert no_clip["history"].diverged
    assert not clip["history"].diverged and clip["history"].clipped_steps > 0
    assert all(math.isfinite(v) for v in clip["history"].loss)
    assert clip["history"].loss[-1] < clip["history"].loss[0]
    assert he["history"].loss[-1] < he["history"].loss[0] and not he["history"].diverged
    assert np.isnan(no_clip["accuracy"])
