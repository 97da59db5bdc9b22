"""The coverage matrix on the models users bring (README "Coverage", benchmarks/bench_zoo.py).

Each cell builds its model fresh, in tf_keras or Keras 3 (`import keras`), trains it a few
steps and either works, asserted on its figures, or raises the one clear error the matrix
promises. The full matrix is `python benchmarks/bench_zoo.py` (`--keras3` for Keras 3's);
these are its cells that fit the suite's budget.
"""

import re

import pytest

import zoo

# (generation, row, column) -> None when the cell works, else a pattern its one error must match.
EXPECTED = {
    ("tf_keras", "KeywordNet", "prune+quantize"): None,
    # One error naming the class, the layer, one layers= filter and the float option.
    ("tf_keras", "TextLSTM", "prune+quantize"): (
        r"cannot quantize 1 layer class .*LSTM \(lstm\)"
        r".*layers=lambda l: not isinstance\(l, keras\.layers\.LSTM\).*unsupported='float'"
    ),
    ("tf_keras", "TextLSTM", "cluster"): None,
    ("tf_keras", "TextGRU", "cluster"): None,
    ("tf_keras", "Transformer", "prune"): None,
    ("tf_keras", "Transformer", "cluster"): None,
    # The same rows built with `import keras` (Keras 3).
    ("keras3", "KeywordNet", "prune+quantize"): None,
    ("keras3", "TextLSTM", "prune+quantize"): (
        r"cannot quantize 2 layer\(s\) of this Keras 3 model .*Embedding \('embedding'.*LSTM \('lstm'"
        r".*layers=lambda l: l\.name not in \{'embedding', 'lstm'\}, or pass unsupported='float'"
    ),
    ("keras3", "TextGRU", "cluster"): None,
    # Fully integer: its LayerNormalization converts without the float NEG Keras 3 computes.
    ("keras3", "Transformer", "int8"): None,
    ("keras3", "Transformer", "prune"): None,
}


def check_works(cell):
    figures = cell.figures
    if "sparsity" in figures:
        assert figures["sparsity"] == pytest.approx(0.5, abs=0.02)
    if "clusters" in figures:
        assert 2 <= figures["clusters"] <= 16
    if "integer" in figures and cell.column in ("quantize", "prune+quantize", "int8", "edgetpu"):
        assert figures["integer"], "int8 was asked for but the file still computes in float"
    if "cosine" in figures:
        # LiteRT answers like Keras on held-back inputs (logits of a model trained a few steps).
        assert figures["cosine"] >= (0.99 if cell.column in ("fp32", "fp16", "dynamic") else 0.9)


@pytest.mark.parametrize("generation, row, column", sorted(EXPECTED), ids=lambda v: str(v))
def test_matrix_cell(generation, row, column):
    cell = zoo.run_cell(row, column, generation=generation)
    expected_error = EXPECTED[(generation, row, column)]
    if expected_error is None:
        assert cell.works, f"{generation} {row} / {column} should work but raised {cell.error}"
        check_works(cell)
    else:
        assert not cell.works, f"{generation} {row} / {column} now works ({cell.short()}): update the matrix"
        assert re.search(expected_error, cell.error), cell.error
