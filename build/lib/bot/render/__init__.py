"""Pictures of every model: a PNG thumbnail and a turntable, drawn by f3d in a warm worker.

This package file stays empty on purpose: the worker (`python -m bot.render.worker`) must
import f3d before anything loads the system's libssl, and asyncio does. The renderer the
pipeline uses is bot.render.renderer.F3dRenderer.
"""
