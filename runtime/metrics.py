"""Prometheus metrics for `serve` (prometheus-client, imported here only).

    avqa_answers_total{mode}                    answers given, by mode (complete, audio_pseudo, visual_pseudo, none)
    avqa_answer_latency_seconds{mode}           histogram of /ask latency (question in -> answer out)
    avqa_rejected_requests_total{reason}        4xx/5xx answers (bad_question, bad_request, not_ready, too_large,
                                                unauthorized, bad_host, bad_origin, unsupported_media_type,
                                                not_found, error)
    avqa_sensor_state{sensor,state}             1 for the sensor's current state, 0 for the others
    avqa_sensor_transitions_total{sensor,to}    state changes
    avqa_sensor_reconnects_total{sensor}        successful reopens after a failure
    avqa_sensor_hung_reads_total{sensor}        reads abandoned by the watchdog
    avqa_frame_age_seconds                      age of the newest camera frame
    avqa_audio_level_dbfs                       level (AC RMS) of the newest audio chunk
    avqa_window_real_segments{sensor}           real segments in the current window (of T)
"""
from typing import Dict

from avqa_edge.errors import AvqaError

from .health import SENSORS, STATES

MODES = ("complete", "audio_pseudo", "visual_pseudo", "none")


class Metrics:
    def __init__(self):
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as e:
            raise AvqaError(f"/metrics needs prometheus-client ({e}): pip install prometheus-client "
                            "(or 'avqa-edge[serve]')") from None
        r = self.registry = CollectorRegistry()
        self.answers = Counter("avqa_answers", "Answers given, by mode", ["mode"], registry=r)
        self.latency = Histogram("avqa_answer_latency_seconds", "Latency of /ask", ["mode"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.rejected = Counter("avqa_rejected_requests", "Requests answered with an error", ["reason"], registry=r)
        self.state = Gauge("avqa_sensor_state", "1 for the sensor's current state", ["sensor", "state"], registry=r)
        self.transitions = Counter("avqa_sensor_transitions", "Sensor state changes", ["sensor", "to"], registry=r)
        self.reconnects = Counter("avqa_sensor_reconnects", "Successful reopens after a failure", ["sensor"], registry=r)
        self.hung = Counter("avqa_sensor_hung_reads", "Reads abandoned by the watchdog", ["sensor"], registry=r)
        self.frame_age = Gauge("avqa_frame_age_seconds", "Age of the newest camera frame", registry=r)
        self.audio_level = Gauge("avqa_audio_level_dbfs", "Level of the newest audio chunk (dBFS)", registry=r)
        self.real_segments = Gauge("avqa_window_real_segments", "Real segments in the current window", ["sensor"],
                                   registry=r)
        for m in MODES:
            self.answers.labels(m)
        for s in SENSORS:
            self.reconnects.labels(s)
            self.hung.labels(s)
        self._seen: Dict[str, Dict[str, int]] = {s: {"reconnects": 0, "hung_reads": 0} for s in SENSORS}

    def answer(self, mode: str, latency_s: float) -> None:
        self.answers.labels(mode).inc()
        self.latency.labels(mode).observe(latency_s)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def transition(self, sensor: str, new: str) -> None:
        self.transitions.labels(sensor, new).inc()

    def update(self, status: Dict) -> None:
        """From Service.status(): sensor states, counters, frame age, audio level."""
        for s, info in status["sensors"].items():
            for st in STATES:
                self.state.labels(s, st).set(1.0 if info["state"] == st else 0.0)
            for key, counter in (("reconnects", self.reconnects), ("hung_reads", self.hung)):
                new = int(info.get(key, 0))
                if new > self._seen[s][key]:
                    counter.labels(s).inc(new - self._seen[s][key])
                    self._seen[s][key] = new
            if "real_segments" in info:
                self.real_segments.labels(s).set(info["real_segments"])
        if status.get("frame_age_s") is not None:
            self.frame_age.set(status["frame_age_s"])
        if status.get("audio_level_dbfs") is not None:
            self.audio_level.set(status["audio_level_dbfs"])

    def render(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST
        return CONTENT_TYPE_LATEST
