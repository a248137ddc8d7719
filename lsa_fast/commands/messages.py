"""Error text for the command line: one line, never cut mid-word, without the names of
internal functions and classes (a user of `lsa-fast` typed options, not Python)."""
from __future__ import annotations

import re

__all__ = ["for_the_command_line"]

# Prefixes of the library's messages that name its internals; on the command line the
# rest of the message says what is wrong.
_INTERNAL = re.compile(r"^(?:TrainConfig|ATLRTrainer|build_model|make_attack|get_attack|make_loader|"
                       r"load_dataset\('\w+'\)|evaluate|analyze): ")

# TrainConfig field -> the `lsa-fast train` option that sets it.
_OPTIONS = {
    "lr": "--learning-rate", "lr_layers": "--lr-layers", "gammas": "--gamma", "gamma": "--gamma",
    "warmup_epochs": "--warmup-epochs", "batch_size": "--batch-size", "weight_decay": "--weight-decay",
    "grad_clip": "--grad-clip", "attack_mode": "--attack-mode",
}
# TrainConfig fields whose option is the field's name.
_TRAIN_FIELDS = ("base", "eps", "alpha", "steps", "beta", "eta", "epochs", "optimizer", "momentum", "schedule", "amp",
                 "seed")


def for_the_command_line(message: str) -> str:
    """A library message as `lsa-fast` prints it: one line, internal prefixes dropped, a
    TrainConfig field named by its option ("TrainConfig: momentum must ..." ->
    "--momentum must ...")."""
    text = " ".join(str(message).split())
    match = _INTERNAL.match(text)
    if not match:
        return text
    rest = text[match.end():]
    if match.group(0).startswith("TrainConfig"):
        word = re.match(r"(\w+)(.*)", rest, re.S)
        if word and (word.group(1) in _OPTIONS or word.group(1) in _TRAIN_FIELDS):
            option = _OPTIONS.get(word.group(1), "--" + word.group(1).replace("_", "-"))
            return option + word.group(2)
    return rest

