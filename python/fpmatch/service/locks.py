"""The service's reader-writer lock, which also refuses callers once the service is closed."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers. Not reentrant.

    ``ensure_open`` runs once the lock is held (it raises when the service is closed).
    """

    def __init__(self, ensure_open: Callable[[], None] = lambda: None) -> None:
        self._ensure_open = ensure_open
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            self._ensure_open()
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self, *, closing: bool = False) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            if not closing:
                self._ensure_open()
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
