"""The data stream's permutations are jax.random.permutation's, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpjax.engine import stream


@pytest.mark.parametrize("num_examples", [1, 7, 1000, 3600])
def test_epoch_permutations_equal_jax_random_permutation(num_examples):
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    epochs = jnp.array([0, 1, 2, 7, 40], jnp.int32)
    drawn = jax.jit(stream.epoch_permutations, static_argnums=2)(keys, epochs, num_examples)
    for row, (key, epoch) in enumerate(zip(keys, epochs, strict=True)):
        expected = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
        np.testing.assert_array_equal(drawn[row], expected)
    assert drawn.dtype == jnp.int32
    if num_examples > 1:  # the rows differ: each row used its own key and epoch
        assert not np.array_equal(drawn[0], drawn[1])


def test_sort_with_equal_keys_is_the_stable_sort():
    """The rare draw with two equal sort keys takes the stable sort, as jax does."""
    rng = np.random.default_rng(0)
    sort_keys = rng.integers(0, 2**32, size=(3, 50), dtype=np.uint64).astype(np.uint32)
    sort_keys[1, 10] = sort_keys[1, 30]  # a tie in one row
    sort_keys = jnp.asarray(sort_keys)
    x = jnp.asarray(rng.permutation(150).reshape(3, 50).astype(np.int32))
    expected = jax.lax.sort_key_val(sort_keys, x, dimension=-1)[1]
    np.testing.assert_array_equal(jax.jit(stream._sort_rows_by)(sort_keys, x), expected)
    no_ties = sort_keys.at[1, 10].set(sort_keys[1, 10] ^ 1)
    np.testing.assert_array_equal(
        jax.jit(stream._sort_rows_by)(no_ties, x),
        jax.lax.sort_key_val(no_ties, x, dimension=-1)[1],
    )
