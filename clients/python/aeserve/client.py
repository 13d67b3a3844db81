"""The aeserve client: scoring, streaming, training, lifecycle and the anomaly feed over gRPC."""
from __future__ import annotations

import dataclasses
import queue
import socket
import threading
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from aeserve.v1 import admin_pb2, admin_pb2_grpc, model_pb2, scoring_pb2, scoring_pb2_grpc


class AeserveError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `message` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclasses.dataclass
class ScoreResult:
    """One scored batch; per-sample fields are numpy arrays in row order."""
    model: str
    version: int
    threshold: float
    errors: np.ndarray            # float32, mean squared reconstruction error per sample
    anomalous: np.ndarray         # bool: score > threshold
    p_values: np.ndarray          # float32
    scores: Optional[np.ndarray] = None  # float32 anomaly score per sample (what is thresholded)
    feature_errors: Optional[np.ndarray] = None  # rows x features, when asked
    top_features: Optional[np.ndarray] = None    # rows x k feature indices
    top_feature_errors: Optional[np.ndarray] = None
    top_feature_names: Optional[np.ndarray] = None  # rows x k names (the model's features)
    missing: Optional[np.ndarray] = None         # per sample: features missing (None: no gaps)
    skipped: Optional[np.ndarray] = None         # per sample: over max_missing_fraction, not scored
    skip_reason: str = ""
    warming_up: Optional[np.ndarray] = None      # series models: per sample, window still filling
    incidents: Sequence = ()                     # streams with debounce: Incident changes
    severity: Optional[np.ndarray] = None        # 0 normal, 1 warning, 2 critical
    alarm: Optional[np.ndarray] = None           # streams with debounce
    ids: Sequence[str] = ()
    entity: str = ""
    sequence: Optional[int] = None               # streams: the batch's sequence number
    compute_seconds: float = 0.0

    @classmethod
    def from_proto(cls, r: scoring_pb2.ScoreResponse, num_features: int = 0,
                   sequence: Optional[int] = None) -> "ScoreResult":
        n = r.num_samples
        fe = np.array(r.feature_errors, dtype=np.float32).reshape(n, -1) if len(r.feature_errors) else None
        k = len(r.top_features) // n if n and len(r.top_features) else 0
        return cls(
            model=r.model, version=r.version, threshold=r.threshold,
            errors=np.array(r.errors, dtype=np.float32),
            # Servers before anomaly scores existed: the score is the error.
            scores=np.array(r.scores if len(r.scores) else r.errors, dtype=np.float32),
            anomalous=np.array(r.anomalous, dtype=bool),
            p_values=np.array(r.p_values, dtype=np.float32),
            feature_errors=fe,
            top_features=np.array(r.top_features, dtype=np.int64).reshape(n, k) if k else None,
            top_feature_errors=np.array(r.top_feature_errors, dtype=np.float32).reshape(n, k) if k else None,
            top_feature_names=(np.array(r.top_feature_names, dtype=object).reshape(n, k)
                               if k and len(r.top_feature_names) else None),
            missing=np.array(r.missing, dtype=np.int64) if len(r.missing) else None,
            skipped=np.array(r.skipped, dtype=bool) if len(r.skipped) else None,
            skip_reason=r.skip_reason, incidents=list(r.incidents),
            warming_up=np.array(r.warming_up, dtype=bool) if len(r.warming_up) else None,
            severity=np.array(r.severity, dtype=np.int64) if len(r.severity) else None,
            alarm=np.array(r.alarm, dtype=bool) if len(r.alarm) else None,
            ids=list(r.ids), entity=r.entity, sequence=sequence,
            compute_seconds=r.compute_seconds)


@dataclasses.dataclass
class StreamStats:
    """A stream's periodic statistics over its last window."""
    sequence: int
    samples: int
    anomalies: int
    anomaly_rate: float
    error_mean: float
    error_p50: float
    error_p90: float
    error_p99: float
    window_seconds: float
    total_samples: int


# The same spellings as aectl's (`mean-std`); `mean_std` is accepted too.
_THRESHOLD_METHODS = {
    "percentile": model_pb2.THRESHOLD_PERCENTILE,
    "mean-std": model_pb2.THRESHOLD_MEAN_STD,
    "median-mad": model_pb2.THRESHOLD_MEDIAN_MAD,
    "fpr": model_pb2.THRESHOLD_TARGET_FPR,
    "fixed": model_pb2.THRESHOLD_FIXED,
}


def _threshold(method: str, value: float) -> model_pb2.ThresholdConfig:
    method = method.replace("_", "-")
    if method not in _THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {sorted(_THRESHOLD_METHODS)}")
    return model_pb2.ThresholdConfig(method=_THRESHOLD_METHODS[method], value=value)


def _columns(x, names=None):
    """The rows as a float32 matrix and their column names: `names` when given, else a pandas
    DataFrame's columns, else None (columns matched by position). NaN (pandas' NA too) is a
    missing value."""
    if names is None and hasattr(x, "columns") and hasattr(x, "to_numpy"):
        names = [str(c) for c in x.columns]
        x = x.to_numpy(dtype=np.float32, na_value=np.nan)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError("samples must be a 2-D array: rows x features")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} names for {x.shape[1]} columns")
    return x, names


_TIME_FEATURES = {"hour": model_pb2.TIME_FEATURE_HOUR_OF_DAY,
                  "weekday": model_pb2.TIME_FEATURE_DAY_OF_WEEK}


def _enum(enum, prefix: str, argument: str, value: str) -> int:
    """The value of `enum` named prefix + value (any case, '-' for '_'); ValueError listing the valid
    names otherwise."""
    valid = [n[len(prefix):].lower() for n in enum.keys()
             if n.startswith(prefix) and not n.endswith("UNSPECIFIED")]
    name = str(value).lower().replace("-", "_")
    if name not in valid:
        raise ValueError(f"{argument}={value!r}: valid values are {', '.join(valid)}")
    return enum.Value(prefix + name.upper())


def _gap_fill(name: str) -> int:
    return _enum(model_pb2.GapFill, "GAP_FILL_", "gap_fill", name)


def _precision(name: str) -> int:
    return _enum(model_pb2.Precision, "PRECISION_", "precision", name)


def _timestamps(x, timestamps=None):
    """Milliseconds since the Unix epoch, one per row: `timestamps` (integers in ms, or numpy /
    pandas datetime64 values, naive = UTC), else the DatetimeIndex of a pandas DataFrame `x`,
    else None."""
    if timestamps is None:
        index = getattr(x, "index", None)
        if index is None or not _is_time(index):
            return None
        timestamps = index
    if getattr(timestamps, "tz", None) is not None:  # pandas, time-zone aware: to UTC, naive
        timestamps = timestamps.tz_convert("UTC").tz_localize(None)
    elif getattr(getattr(timestamps, "dt", None), "tz", None) is not None:  # a pandas Series
        timestamps = timestamps.dt.tz_convert("UTC").dt.tz_localize(None)
    t = np.asarray(timestamps)
    if np.issubdtype(t.dtype, np.datetime64):
        if np.isnat(t).any():
            raise ValueError("timestamps must not hold NaT (not a time)")
        return t.astype("datetime64[ms]").astype(np.int64)
    return t.astype(np.int64)


def _is_time(index) -> bool:
    """A pandas DatetimeIndex (time-zone aware or not)."""
    if getattr(index, "tz", None) is not None:
        return True
    dtype = getattr(index, "dtype", None)
    try:
        return dtype is not None and np.issubdtype(dtype, np.datetime64)
    except TypeError:  # a pandas extension dtype
        return False


def _samples(x, ids=None, names=None, ignore_unknown: bool = False,
             timestamps=None) -> scoring_pb2.Samples:
    """Samples for `x` (rows x features; a DataFrame sends its column names, and the times of a
    DatetimeIndex)."""
    ts = _timestamps(x, timestamps)
    x, names = _columns(x, names)
    s = scoring_pb2.Samples(num_features=x.shape[1])
    if ts is not None:
        if len(ts) != x.shape[0]:
            raise ValueError(f"{len(ts)} timestamps for {x.shape[0]} rows")
        s.timestamps_ms.extend(int(t) for t in ts)
    s.values.extend(x.ravel())
    if names is not None:
        s.feature_names.extend(names)
        s.ignore_unknown_features = ignore_unknown
    if ids is not None:
        s.ids.extend(str(i) for i in ids)
    return s


def replica_addresses(replicas) -> list:
    """The servers `replicas` names: a list of addresses as is, a comma-separated string split, or
    "dns:///host:port" resolved to every address the name has now (a Kubernetes headless service:
    one per pod)."""
    if not isinstance(replicas, str):
        return list(replicas)
    if "," in replicas:
        return [a for a in replicas.split(",") if a]
    if not replicas.startswith("dns:///"):
        return [replicas]
    host, _, port = replicas[len("dns:///"):].rpartition(":")
    if not host:
        host, port = port, "50051"
    out = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM):
        address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if address not in out:
            out.append(address)
    return out or [replicas]


class Client:
    """A connection to one aeserve server.

    token: bearer token for servers started with --auth_tokens.
    tls: None for plaintext, or a dict with "ca" (PEM path) and optionally "cert" and "key"
         (client certificate for mutual TLS).
    timeout: deadline in seconds of unary calls.
    """

    def __init__(self, address: str = "localhost:50051", token: Optional[str] = None,
                 tls=None, timeout: float = 30.0, options: Sequence[Tuple[str, object]] = ()):
        """`tls`: a dict of PEM file paths ({"ca": ..., "cert": ..., "key": ...}; cert and key for
        mutual TLS), or a grpc.ChannelCredentials. `options`: more gRPC channel options (they
        override the client's own message-size limits) — e.g. [("grpc.lb_policy_name",
        "round_robin")] with a "dns:///aeserve:50051" address spreads calls over replicas."""
        given = {k for k, _ in options}  # gRPC takes the first of duplicate options: theirs win
        options = [*options] + [(k, v) for k, v in (("grpc.max_receive_message_length", 256 << 20),
                                                      ("grpc.max_send_message_length", 256 << 20))
                                if k not in given]
        if isinstance(tls, grpc.ChannelCredentials):
            creds = tls
        elif tls:
            def read(key):
                return open(tls[key], "rb").read() if tls.get(key) else None
            creds = grpc.ssl_channel_credentials(read("ca"), read("key"), read("cert"))
        else:
            creds = None
        self._creds, self._options = creds, options
        self._channel = self._connect(address)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout
        self._scoring = scoring_pb2_grpc.ScoringStub(self._channel)
        self._admin = admin_pb2_grpc.ModelAdminStub(self._channel)

    def _connect(self, address: str) -> grpc.Channel:
        if self._creds is not None:
            return grpc.secure_channel(address, self._creds, self._options)
        return grpc.insecure_channel(address, self._options)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout: Optional[float] = -1):
        try:
            return method(request, timeout=self._timeout if timeout == -1 else timeout,
                          metadata=self._metadata)
        except grpc.RpcError as e:
            raise AeserveError(e.code(), e.details()) from None

    # Scoring -------------------------------------------------------------------------------

    def score(self, model: str, x, version: int = 0, entity: str = "", top_k: int = 0,
              per_feature: bool = False, original_units: bool = False, neg_elbo: bool = False,
              ids: Optional[Sequence] = None, names: Optional[Sequence[str]] = None,
              ignore_unknown: bool = False, timestamps=None) -> ScoreResult:
        """Scores the rows of `x` (rows x features). Columns are matched to the model's features
        by name when `names` is given or `x` is a pandas DataFrame (any order; a feature the
        columns lack is missing; unknown columns are refused unless `ignore_unknown`), else by
        position. NaN is a missing value. A series model (trained with a window) takes the rows as
        consecutive time steps with `timestamps` (ms, or datetime64; a DataFrame's DatetimeIndex by
        default) and answers every row, the first window-1 as warming_up. Raises AeserveError on a
        failed call."""
        req = scoring_pb2.ScoreRequest(
            model=model, version=version, entity=entity,
            samples=_samples(x, ids, names, ignore_unknown, timestamps),
            options=scoring_pb2.ScoreOptions(per_feature=per_feature, original_units=original_units,
                                             top_k=top_k, neg_elbo=neg_elbo,
                                             top_feature_names=top_k > 0))
        return ScoreResult.from_proto(self._call(self._scoring.Score, req))

    def stream(self, model: str, batches: Iterable, top_k: int = 0, stats_every_batches: int = 0,
               stats_every_seconds: float = 0.0, debounce: Optional[tuple] = None,
               stream_id: str = "", version: int = 0, names: Optional[Sequence[str]] = None,
               ignore_unknown: bool = False,
               ) -> Iterator[Union[ScoreResult, StreamStats, AeserveError]]:
        """Streams `batches` (each rows x features) over StreamScore and yields, in order, a
        ScoreResult per batch (or an AeserveError for a batch the server refused) and the
        periodic StreamStats. Batches are sent from a background thread while results arrive.
        `names` (or the first batch's DataFrame columns) name the columns of every batch. For a
        series model each batch is the next time steps: an (x, timestamps) pair, or a DataFrame
        with a DatetimeIndex; the server keeps the window from batch to batch."""
        config = scoring_pb2.StreamConfig(
            model=model, version=version,
            options=scoring_pb2.ScoreOptions(top_k=top_k, top_feature_names=top_k > 0),
            stats_every_batches=stats_every_batches, stats_every_seconds=stats_every_seconds,
            stream_id=stream_id, ignore_unknown_features=ignore_unknown)
        if names is not None:
            config.feature_names.extend(str(n) for n in names)
        if debounce:
            config.debounce_k, config.debounce_n = debounce

        def requests():
            for seq, x in enumerate(batches):
                times = None
                if isinstance(x, tuple):
                    x, times = x
                times = _timestamps(x, times)
                x, batch_names = _columns(x)
                if seq == 0 and batch_names is not None and not config.feature_names:
                    config.feature_names.extend(batch_names)
                req = scoring_pb2.StreamScoreRequest(sequence=seq, samples=_samples(x, timestamps=times))
                if seq == 0:
                    req.config.CopyFrom(config)
                yield req

        try:
            for r in self._scoring.StreamScore(requests(), metadata=self._metadata):
                kind = r.WhichOneof("kind")
                if kind == "result":
                    yield ScoreResult.from_proto(r.result, sequence=r.sequence)
                elif kind == "stats":
                    s = r.stats
                    yield StreamStats(r.sequence, s.samples, s.anomalies, s.anomaly_rate,
                                      s.error_mean, s.error_p50, s.error_p90, s.error_p99,
                                      s.window_seconds, s.total_samples)
                else:
                    yield AeserveError(grpc.StatusCode(_code(r.error.code)), r.error.message)
        except grpc.RpcError as e:
            raise AeserveError(e.code(), e.details()) from None

    def encode(self, model: str, x, version: int = 0, names: Optional[Sequence[str]] = None,
               timestamps=None) -> np.ndarray:
        """The code of each row (a series model: of each full window over the rows)."""
        r = self._call(self._scoring.Encode, scoring_pb2.EncodeRequest(
            model=model, version=version, samples=_samples(x, names=names, timestamps=timestamps)))
        return np.array(r.codes, dtype=np.float32).reshape(-1, r.code_size)

    def reconstruct(self, model: str, x, version: int = 0,
                    names: Optional[Sequence[str]] = None, timestamps=None) -> np.ndarray:
        """The reconstruction of each row in original units (missing values filled in); a series
        model: of each full window over the rows."""
        r = self._call(self._scoring.Reconstruct, scoring_pb2.ReconstructRequest(
            model=model, version=version, samples=_samples(x, names=names, timestamps=timestamps)))
        return np.array(r.values, dtype=np.float32).reshape(-1, r.num_features)

    def generate(self, model: str, count: int, seed: int = 1, version: int = 0) -> np.ndarray:
        r = self._call(self._scoring.Generate,
                       scoring_pb2.GenerateRequest(model=model, version=version, count=count, seed=seed))
        return np.array(r.values, dtype=np.float32).reshape(-1, r.num_features)

    def watch(self, model: str = "", min_severity: int = 0, incidents: bool = False,
              timeout: Optional[float] = None,
              replicas=None) -> Iterator[scoring_pb2.AnomalyEvent]:
        """The live feed of flagged samples (AnomalyEvent messages) until cancelled or `timeout`
        seconds pass; with incidents=True one event per incident change of debounced streams
        (event.incident) instead. `replicas`: the merged feeds of several servers — a list of
        addresses, or a "dns:///name:port" resolved to every address it has now (a Kubernetes
        headless service: one per pod); this client's token, TLS and options apply to each."""
        if replicas is not None:
            yield from self._watch_replicas(replica_addresses(replicas), model, min_severity,
                                            incidents, timeout)
            return
        try:
            yield from self._scoring.WatchAnomalies(
                scoring_pb2.WatchAnomaliesRequest(model=model, min_severity=min_severity,
                                                  incidents=incidents),
                metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise AeserveError(e.code(), e.details()) from None

    def _watch_replicas(self, addresses, model, min_severity, incidents, timeout):
        request = scoring_pb2.WatchAnomaliesRequest(model=model, min_severity=min_severity,
                                                    incidents=incidents)
        channels = [self._connect(a) for a in addresses]
        calls = [scoring_pb2_grpc.ScoringStub(c).WatchAnomalies(
            request, metadata=self._metadata, timeout=timeout) for c in channels]
        events: queue.Queue = queue.Queue(maxsize=1024)
        done = object()

        def pump(call):
            error = None
            try:
                for event in call:
                    events.put(event)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    error = AeserveError(e.code(), e.details())
            events.put((done, error))

        threads = [threading.Thread(target=pump, args=(c,), daemon=True) for c in calls]
        for t in threads:
            t.start()
        try:
            running = len(threads)
            while running:
                item = events.get()
                if isinstance(item, tuple) and item[0] is done:
                    running -= 1
                    if item[1] is not None:
                        raise item[1]
                    continue
                yield item
        finally:  # the caller stopped (or one replica failed): end every feed
            for c in calls:
                c.cancel()
            for ch in channels:
                ch.close()

    # Models -------------------------------------------------------------------------------

    def models(self) -> list:
        return list(self._call(self._scoring.ListModels, scoring_pb2.ListModelsRequest()).models)

    def model(self, name: str, include_calibration: bool = False) -> scoring_pb2.ModelInfo:
        return self._call(self._scoring.GetModel, scoring_pb2.GetModelRequest(
            model=name, include_calibration=include_calibration))

    def activate(self, model: str, version: int, entity: str = "") -> admin_pb2.ModelInfoBrief:
        return self._call(self._admin.ActivateVersion,
                          admin_pb2.ActivateVersionRequest(model=model, entity=entity, version=version))

    def set_threshold(self, model: str, method: str, value: float, version: int = 0,
                      critical: Optional[tuple] = None, entity: str = "") -> admin_pb2.ModelInfoBrief:
        """method: percentile, mean-std, median-mad, fpr or fixed (as in aectl; mean_std works too); critical: (method, value)."""
        req = admin_pb2.SetThresholdRequest(model=model, entity=entity, version=version,
                                            threshold=_threshold(method, value))
        if critical:
            req.critical_threshold.CopyFrom(_threshold(*critical))
        return self._call(self._admin.SetThreshold, req)

    def set_policy(self, model: str, max_missing_fraction: Optional[float] = None,
                   impute_refinements: Optional[int] = None, version: int = 0,
                   entity: str = "", max_gap_steps: Optional[int] = None,
                   gap_fill: Optional[str] = None,
                   precision: Optional[str] = None) -> admin_pb2.ModelInfoBrief:
        """Changes how a version treats missing values and (series models) gaps in time, or its
        arithmetic (precision "f32" or "bf16"); unset arguments keep their value."""
        req = admin_pb2.SetScoringPolicyRequest(model=model, entity=entity, version=version)
        if precision is not None:
            req.policy.precision = _precision(precision)
        if max_gap_steps is not None:
            req.policy.max_gap_steps = max_gap_steps
        if gap_fill is not None:
            req.policy.gap_fill = _gap_fill(gap_fill)
        if max_missing_fraction is not None:
            req.policy.max_missing_fraction = max_missing_fraction
        if impute_refinements is not None:
            req.policy.impute_refinements = impute_refinements
        return self._call(self._admin.SetScoringPolicy, req)

    # Training -----------------------------------------------------------------------------

    def train(self, model: str, data, feature_names: Optional[Sequence[str]] = None,
              kind: Optional[str] = None, layers: Sequence[int] = (), code: int = 0,
              epochs: Optional[int] = None, batch_size: Optional[int] = None,
              learning_rate: Optional[float] = None, weight_decay: Optional[float] = None,
              dropout: Optional[float] = None, validation_split: Optional[float] = None,
              patience: Optional[int] = None, seed: Optional[int] = None,
              scaling: Optional[str] = None, loss: Optional[str] = None,
              activation: Optional[str] = None, noise_level: float = 0.0, l1_penalty: float = 0.0,
              kl_sparsity_weight: float = 0.0, beta: float = 0.0, percentile: Optional[float] = None,
              neighbors: Optional[int] = None, reference_rows: int = 0,
              reconstruction_weight: Optional[float] = None,
              neighbor_groups: Optional[int] = None, hold_out: Optional[str] = None,
              max_missing_fraction: Optional[float] = None,
              impute_refinements: Optional[int] = None,
              window: int = 0, stride: int = 0, time_features: Sequence[str] = (),
              max_gap_steps: Optional[int] = None, gap_fill: Optional[str] = None, timestamps=None,
              entity: str = "", fine_tune: bool = False, activate: bool = True,
              progress: Optional[Callable[[admin_pb2.TrainingJob], None]] = None,
              wait: bool = True, retain: bool = False,
              from_recording: bool = False,
              precision: Optional[str] = None) -> admin_pb2.TrainingJob:
        """Uploads `data` (rows x features), trains a new version in the server, and (with wait)
        watches the job to its end, calling progress(job) once per epoch reported (a slow watcher
        may miss some: the server sends the latest state, never a backlog), and with the final
        state only when it reports an epoch not seen yet (no epoch twice). Returns the final
        TrainingJob; raises AeserveError if the job is refused or fails. Every option left unset
        (None, or no layers) takes the server's default (README, "Defaults": 50 epochs, batch 64,
        Adam 1e-3, dropout 0.2, 10% held out, threshold at the 99th percentile; neighbors=0: the
        score is the reconstruction error alone). `hold_out`: "random"
        (a seeded sample) or "last" (the last validation_split of the rows as given); unset = the
        server's default. A pandas
        DataFrame gives the feature names. NaN is a missing value (no gradient); rows missing more
        than `max_missing_fraction` (default 0.5) of their features are left out.

        Time series: `window` > 1 and/or `time_features` ("hour", "weekday") make a series model:
        `data` is then the raw series in time order with `timestamps` (ms or datetime64; a
        DataFrame's DatetimeIndex by default), and the server builds the windows (every `stride`
        steps). Scoring then takes one row per time step. A gap in time of up to `max_gap_steps`
        missed steps is closed up (gap_fill="join", the default) or entered as missing rows
        ("missing"); a longer one restarts the window.

        `precision`: "f32" or "bf16", the arithmetic the version scores with (unset = the
        server's --precision).

        `retain`: also keep these rows as the model's history for its retrain policy (which must
        exist; see set_retrain_policy), so the autopilot's retrains learn from them too.

        `from_recording`: train on the rows ingest recorded on the server (record_ingest); `data`
        is then None and the binding gives the features."""
        if from_recording:
            if data is not None:
                raise ValueError("from_recording trains on the server's recording: give data=None")
            data = np.zeros((0, 0), dtype=np.float32)
        ts = _timestamps(data, timestamps)
        x, names = _columns(data, feature_names)
        if ts is not None and len(ts) != x.shape[0]:
            raise ValueError(f"{len(ts)} timestamps for {x.shape[0]} rows")
        header = admin_pb2.TrainingJobHeader(
            model=model, entity=entity, num_features=x.shape[1], rows=x.shape[0],
            fine_tune=fine_tune,
            no_activate=not activate, retain=retain,
            options=model_pb2.TrainingOptions(
                epochs=epochs or 0, batch_size=batch_size or 0, learning_rate=learning_rate or 0,
                weight_decay=weight_decay or 0, patience=patience or 0, seed=seed or 0))
        if scaling is not None:
            header.options.scaling = _enum(model_pb2.Scaling, "SCALING_", "scaling", scaling)
        if percentile is not None:
            header.threshold.CopyFrom(_threshold("percentile", percentile))
        if validation_split is not None:
            header.options.validation_split = validation_split
        if dropout is not None:
            header.options.dropout = dropout
        if hold_out is not None:  # unset = the server's default
            header.options.hold_out = _enum(model_pb2.HoldOut, "HOLD_OUT_", "hold_out", hold_out)
        if names is not None:
            header.feature_names.extend(names)
        if max_missing_fraction is not None:
            header.policy.max_missing_fraction = max_missing_fraction
        if impute_refinements is not None:
            header.policy.impute_refinements = impute_refinements
        if max_gap_steps is not None:
            header.policy.max_gap_steps = max_gap_steps
        if gap_fill is not None:
            header.policy.gap_fill = _gap_fill(gap_fill)
        if precision is not None:
            header.policy.precision = _precision(precision)
        if not fine_tune:
            header.spec.CopyFrom(model_pb2.ModelSpec(
                encoder_units=list(layers), code_size=code, noise_level=noise_level,
                l1_penalty=l1_penalty, kl_sparsity_weight=kl_sparsity_weight, beta=beta,
                reference_rows=reference_rows))
            if kind is not None:
                header.spec.kind = _enum(model_pb2.ModelKind, "MODEL_KIND_", "kind", kind)
            if activation is not None:
                header.spec.hidden_activation = _enum(model_pb2.Activation, "ACTIVATION_", "activation", activation)
            if loss is not None:
                header.spec.loss = _enum(model_pb2.Loss, "LOSS_", "loss", loss)
            if neighbors is not None:
                header.spec.neighbors = neighbors
            if reconstruction_weight is not None:
                header.spec.reconstruction_weight = reconstruction_weight
            if neighbor_groups is not None:
                header.spec.neighbor_groups = neighbor_groups
            header.spec.window.length = window
            header.spec.window.stride = stride
            for f in time_features:
                if f not in _TIME_FEATURES:
                    raise ValueError(f"time feature must be one of {sorted(_TIME_FEATURES)}")
                header.spec.window.time_features.append(_TIME_FEATURES[f])

        def chunks(rows_per_chunk=16384):
            for start in range(0, max(len(x), 1), rows_per_chunk):
                req = admin_pb2.CreateTrainingJobRequest()
                if start == 0:
                    req.header.CopyFrom(header)
                req.values.extend(x[start:start + rows_per_chunk].ravel())
                if ts is not None:
                    req.timestamps_ms.extend(int(t) for t in ts[start:start + rows_per_chunk])
                yield req

        try:
            if from_recording:
                job = self._admin.TrainFromRecording(header, metadata=self._metadata)
            else:
                job = self._admin.CreateTrainingJob(chunks(), metadata=self._metadata)
            if not wait:
                return job
            reported = None  # the last epoch given to progress
            for job in self._admin.WatchTrainingJob(admin_pb2.GetTrainingJobRequest(id=job.id),
                                                    metadata=self._metadata):
                if progress and job.epoch != reported:
                    reported = job.epoch
                    progress(job)
        except grpc.RpcError as e:
            raise AeserveError(e.code(), e.details()) from None
        if job.state != admin_pb2.JOB_STATE_SUCCEEDED:
            raise AeserveError(grpc.StatusCode.ABORTED,
                               f"training job {job.id} {admin_pb2.JobState.Name(job.state)}: {job.error}")
        return job

    def jobs(self, model: str = "") -> list:
        return list(self._call(self._admin.ListTrainingJobs,
                               admin_pb2.ListTrainingJobsRequest(model=model)).jobs)

    def job(self, job_id: str) -> admin_pb2.TrainingJob:
        return self._call(self._admin.GetTrainingJob, admin_pb2.GetTrainingJobRequest(id=job_id))

    def cancel(self, job_id: str) -> admin_pb2.TrainingJob:
        return self._call(self._admin.CancelTrainingJob, admin_pb2.GetTrainingJobRequest(id=job_id))

    def set_retrain_policy(self, model: str, retain_rows: int = 0, *, entity: str = "",
                           retain_hours: float = 0, flagged_rows: str = "keep",
                           drift_above: float = 0, drift_samples: int = 0,
                           grown_factor: float = 0, grown_rows: int = 0, every_hours: float = 0,
                           min_interval_seconds: Optional[float] = None,
                           min_rows: Optional[int] = None, fine_tune: bool = False,
                           promotion: str = "shadow", shadow_samples: Optional[int] = None,
                           shadow_seconds: Optional[float] = None,
                           flag_ratio: Optional[Tuple[float, float]] = None,
                           clear: bool = False) -> model_pb2.AutopilotStatus:
        """The model's autopilot (README, "Autopilot"): keep the newest `retain_rows` rows it
        scores, retrain on them when a trigger fires (drift above `drift_above` for
        `drift_samples` samples, `grown_factor` x or `grown_rows` more rows than the last
        training, every `every_hours`), then "shadow" the new version and promote it by the rule
        (`flag_ratio` = (min, max) x its target flag rate, and no more drift than the active one),
        "activate" it at once, or "stage" it. `clear=True` removes the policy and the rows.
        Unset options take the server's defaults."""
        p = model_pb2.RetrainPolicy(
            retain_rows=retain_rows, retain_hours=retain_hours,
            flagged_rows=_enum(model_pb2.FlaggedRows, "FLAGGED_ROWS_", "flagged_rows",
                               flagged_rows.replace("-", "_")),
            drift_above=drift_above, drift_samples=drift_samples, grown_factor=grown_factor,
            grown_rows=grown_rows, every_hours=every_hours, fine_tune=fine_tune,
            promotion=_enum(model_pb2.Promotion, "PROMOTION_", "promotion", promotion))
        if min_interval_seconds is not None:
            p.min_interval_seconds = min_interval_seconds
        if min_rows is not None:
            p.min_rows = min_rows
        if shadow_samples is not None:
            p.shadow_samples = shadow_samples
        if shadow_seconds is not None:
            p.shadow_seconds = shadow_seconds
        if flag_ratio is not None:
            p.min_flag_ratio, p.max_flag_ratio = flag_ratio
        return self._call(self._admin.SetRetrainPolicy, admin_pb2.SetRetrainPolicyRequest(
            model=model, entity=entity, policy=p, clear=clear))

    def set_ingest_binding(self, model: str, features: Dict[str, str], *, entity_label: str = "",
                           tolerance_ms: int = 0, flush_ms: int = 0, debounce_k: int = 0,
                           debounce_n: int = 0, clear: bool = False) -> model_pb2.IngestStatus:
        """Binds the model's features to series sent by Prometheus remote write or OTLP (README,
        "Prometheus in"): `features` maps each feature name to a selector such as
        'rate(node_cpu_seconds_total{mode="user"})'; `entity_label` names the host label.
        `debounce_k`/`debounce_n`: an alarm per entity while k of its last n rows are flagged,
        each an incident on watch(incidents=True). `clear=True` removes the binding. Unset
        options take the server's defaults."""
        b = model_pb2.IngestBinding(entity_label=entity_label, tolerance_ms=tolerance_ms,
                                    flush_ms=flush_ms, debounce_k=debounce_k,
                                    debounce_n=debounce_n)
        for name, selector in features.items():
            b.features.add(name=name, selector=selector)
        return self._call(self._admin.SetIngestBinding, admin_pb2.SetIngestBindingRequest(
            model=model, binding=b, clear=clear))

    def record_ingest(self, model: str, minutes: float = 30, *, max_rows: int = 0,
                      stop: bool = False) -> model_pb2.IngestStatus:
        """Records the rows ingest assembles for a bound model, as a training set on the server
        (then train(model, None, from_recording=True)); `stop=True` ends it early."""
        return self._call(self._admin.RecordIngest, admin_pb2.RecordIngestRequest(
            model=model, seconds=minutes * 60, max_rows=max_rows, stop=stop))

    def retrain(self, model: str, entity: str = "") -> admin_pb2.TrainingJob:
        """Retrains now on the model's retained rows, as its retrain policy says."""
        return self._call(self._admin.Retrain, admin_pb2.RetrainRequest(model=model, entity=entity))

    def start_shadow(self, model: str, version: int, entity: str = "") -> model_pb2.AutopilotStatus:
        """Puts a staged version in shadow beside the active one (the policy's window)."""
        return self._call(self._admin.StartShadow, admin_pb2.StartShadowRequest(
            model=model, entity=entity, version=version))

    def autopilot(self, model: str, entity: str = "") -> Optional[model_pb2.AutopilotStatus]:
        """The model's retained rows, last retrain and shadow report; None without a policy."""
        info = self._call(self._scoring.GetModel,
                          scoring_pb2.GetModelRequest(model=model, entity=entity))
        return info.autopilot if info.HasField("autopilot") else None

    def history(self, model: str = "", entity: str = "", since_unix_ms: int = 0,
                limit: int = 0) -> list:
        """The audit log's events (oldest first): who trained, activated, deleted or changed
        what, and why; a model name includes its entities' events."""
        return list(self._call(self._admin.ListEvents, admin_pb2.ListEventsRequest(
            model=model, entity=entity, since_unix_ms=since_unix_ms, limit=limit)).events)


def _code(value: int) -> tuple:
    """The grpc.StatusCode member value for a numeric google.rpc code."""
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c.value
    return grpc.StatusCode.UNKNOWN.value
