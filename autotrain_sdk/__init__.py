"""The name scripts written for the pipeline's first documentation import.

`autotrain_sdk.pipeline` keeps that documented call working; the real API is `autotrain.pipeline`.
"""
