"""Fault injection for tests, loaded by every Python process started with this folder on
PYTHONPATH (the job, its Ray workers, the decoder children): a stand-in for a codec bug.

- ``pipeline.models.images.decode_image``: the process decoding a file that holds
  ``KILL-THE-DECODER`` dies by SIGKILL, as with a segfaulting codec, on every attempt; one
  holding ``HANG-THE-DECODER`` never returns, as with a codec that spins.
- ``pipeline.stages.features.CleanImages.features``: the actor cleaning an image of
  exactly ``KILL_THE_CLEANER`` (height, width) pixels dies by SIGKILL, on every attempt.
Nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
import time

KILL_THE_DECODER = b"KILL-THE-DECODER"
HANG_THE_DECODER = b"HANG-THE-DECODER"
KILL_THE_CLEANER = (89, 97)


def _wrap_decoder(module):  # type: ignore[no-untyped-def]
    decode = module.decode_image

    def decode_image(data, *args, **kwargs):  # type: ignore[no-untyped-def]
        if KILL_THE_DECODER in data:
            os.kill(os.getpid(), signal.SIGKILL)
        if HANG_THE_DECODER in data:
            time.sleep(3600)
        return decode(data, *args, **kwargs)

    module.decode_image = decode_image


def _wrap_cleaner(module):  # type: ignore[no-untyped-def]
    features = module.CleanImages.features

    def wrapped(self, images, ids):  # type: ignore[no-untyped-def]
        if any(image.shape[:2] == KILL_THE_CLEANER for image in images):
            os.kill(os.getpid(), signal.SIGKILL)
        return features(self, images, ids)

    module.CleanImages.features = wrapped


WRAPS = {"pipeline.models.images": _wrap_decoder, "pipeline.stages.features": _wrap_cleaner}


class _Faults(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name not in WRAPS:
            return None
        sys.meta_path.remove(self)  # find the real module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        real_exec = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            real_exec(module)
            WRAPS[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Faults())
