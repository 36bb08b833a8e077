"""Where agents run: in this process (`LocalPool`) or as Ray Serve applications (`hosting.ray_serve`)."""

from slm_router.agents.hosting.local import AgentPool, LocalPool

__all__ = ["AgentPool", "LocalPool"]
