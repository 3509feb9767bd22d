"""Running the engine continuously.

``JourneyThread`` advances journeys every ``interval`` seconds (the ``journeys.advance``
schedule does the same once a minute through the task queue).
``python -m propel.journeys.worker [INTERVAL [BATCH]]`` runs it, with the campaigns'
delivery thread, as a process of its own, configured like ``propel serve`` by the
``PROPEL_*`` environment.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from propel.core import Propel

log = logging.getLogger("propel.journeys")


class JourneyThread(threading.Thread):
    def __init__(self, propel: Propel, interval: float = 1.0, batch_size: int = 2000
                 ) -> None:
        super().__init__(name="propel-journeys", daemon=True)
        self.propel = propel
        self.interval = interval
        self.batch_size = batch_size
        self.stopping = threading.Event()

    def run(self) -> None:
        from propel.journeys.engine import advance

        while not self.stopping.is_set():
            try:
                advance(self.propel, batch_size=self.batch_size)
            except Exception:  # keep going after a transient failure
                log.exception("journey engine failed; retrying")
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def main() -> None:
    from propel.campaigns.delivery import DeliveryThread
    from propel.observability import configure_logging
    from propel.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format)
    propel = Propel(settings)
    if settings.is_sqlite:
        propel.migrate()
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    threads = [JourneyThread(propel, interval, batch), DeliveryThread(propel, interval=0.2)]
    for t in threads:
        t.start()
    print("journeys worker ready", flush=True)
    try:
        while all(t.is_alive() for t in threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for t in threads:
        t.stop()
    propel.close()


if __name__ == "__main__":
    main()
