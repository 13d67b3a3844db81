"""Python client for aeserve, the autoencoder anomaly-detection service.

    from aeserve import Client
    c = Client("localhost:50051")
    result = c.score("demo", x)          # x: numpy array, rows x features
    result.anomalous, result.errors, result.p_values
"""
from aeserve.client import AeserveError, Client, ScoreResult, StreamStats, replica_addresses

__all__ = ["AeserveError", "Client", "ScoreResult", "StreamStats", "replica_addresses"]
