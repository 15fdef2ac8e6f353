"""Errors as the browser shows them: our own sentence, or a generic one for anything else."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from ..errors import JanusError

logger = logging.getLogger(__name__)

SERVER_FAULT = "Something went wrong on the server; please try again."


def user_facing(fn):
    """Turn our errors into `gr.Error` with their own sentence, and anything else into a generic
    one (logged with its traceback), for plain and generator functions alike."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, JanusError):
            return gr.Error(str(exc), print_exception=False)
        logger.exception("request failed")
        return gr.Error(SERVER_FAULT, print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise translate(exc) from exc

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    return call
