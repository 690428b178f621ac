"""The end-to-end check asks a closed-vocabulary model for a caption it was trained on."""

from __future__ import annotations

from md_export.checkpoint.folder import Checkpoint
from md_export.shapes.dataset import parse_caption
from md_export.verify.end_to_end import E2E_PROMPT, e2e_prompt


class _OpenVocabulary:
    def training_vocabulary(self):
        return None


def test_the_trained_default_model_is_checked_on_one_of_its_captions():
    prompt = e2e_prompt(Checkpoint.open(None))
    assert prompt != E2E_PROMPT
    assert parse_caption(prompt).shape == "circle"  # raises on a caption outside shapes-v1


def test_other_checkpoints_keep_the_general_prompt():
    assert e2e_prompt(_OpenVocabulary()) == E2E_PROMPT
