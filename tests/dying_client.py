#!/usr/bin/python3
"""A client process that dies in the middle of a streaming call: sends the messages given as hex
arguments on METHOD of 127.0.0.1:PORT, never half-closes, and, when a line arrives on standard
input, exits abruptly (os._exit: no cancel, the connection just drops).
Usage: dying_client.py PORT METHOD HEX [HEX ...]"""
import os
import sys
import threading

import grpc

port, method, messages = sys.argv[1], sys.argv[2], [bytes.fromhex(h) for h in sys.argv[3:]]


def requests():
    yield from messages
    threading.Event().wait()  # never half-close


channel = grpc.insecure_channel("127.0.0.1:" + port)
call = channel.stream_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
threading.Thread(target=lambda: call(requests(), timeout=120), daemon=True).start()
sys.stdin.readline()
os._exit(0)
