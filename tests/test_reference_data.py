"""The synthetic reference weights and inputs this torch generates are the ones the reference outputs in tests/data
were computed from (sha256 in tests/data/fingerprints.json). A different random stream, e.g. of another torch
version, fails here by name instead of as a mismatch of every backbone against its reference tensors."""
import hashlib
import json

import pytest

from tests.utils import DATA_DIR, INPUTS, make_input, official_keys

FINGERPRINTS = json.loads((DATA_DIR / 'fingerprints.json').read_text())


@pytest.mark.parametrize('model_name', sorted(FINGERPRINTS['weights']))
def test_reference_weights_match_their_fingerprint(model_name, reference_weights):
    expected = FINGERPRINTS['weights'][model_name]
    state_dict = reference_weights(model_name)
    digest = hashlib.sha256()
    for key in official_keys(model_name):  # the spec's order
        digest.update(state_dict[key].contiguous().numpy().tobytes())
    assert len(state_dict) == expected['n_keys']
    assert sum(t.numel() for t in state_dict.values()) == expected['n_elements']
    assert digest.hexdigest() == expected['sha256']


def test_reference_inputs_match_their_fingerprints():
    for name, expected in FINGERPRINTS['inputs'].items():
        x = make_input(expected['shape'], expected['seed'])
        assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == expected['sha256'], name
        assert x.flatten()[:4].tolist() == expected['first4'], name
    # tests/utils.py uses exactly these inputs
    stored = sorted((tuple(e['shape']), e['seed']) for e in FINGERPRINTS['inputs'].values())
    assert sorted(INPUTS.values()) == stored
