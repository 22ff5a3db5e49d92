"""The engine in this process, behind the add-on's backend interface (blender_addon.core.clients.Backend).

The headless CLI runs the add-on's own code in the bpy module; with this, its jobs go to the engine
directly (no server, no HTTP) through the same job queue the server uses, so progress, cancel and
results behave exactly as with a server.
"""

from __future__ import annotations

import io

from blender_addon.core.clients import BackendError
from blender_addon.core.protocol import Health, JobIn, JobOut

from . import __version__
from .engine.request import GenerationRequest
from .errors import SceneDiffusionError
from .images import open_image
from .server.jobs import JobQueue


class InProcessBackend:
    url = "in-process"

    def __init__(self, engine) -> None:
        self.engine = engine
        self.queue = JobQueue(engine)

    def health(self) -> Health:
        info = self.engine.info()
        return Health(version=__version__, model=self.engine.model_id, family=info["family"],
                      device=info["device"], dtype=info["dtype"], modes=tuple(self.engine.modes()))

    def models(self) -> list[str]:
        return [self.engine.model_id]

    def submit(self, job: JobIn) -> str:
        try:
            images = {
                name: tuple(open_image(png, f"{name}[{k}]", mode) for k, png in enumerate(getattr(job, name)))
                for name, mode in (("init_images", "RGB"), ("masks", "L"), ("depths", "L"))
            }
        except SceneDiffusionError as exc:
            raise BackendError(str(exc)) from None
        request = GenerationRequest(
            prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width, height=job.height,
            steps=job.steps, guidance=job.guidance, seed=job.seed, count=job.count, strength=job.strength,
            sampler=job.sampler, seamless=job.seamless, controlnet_scale=job.controlnet_scale, **images,
        )
        try:
            request.validate()
            return self.queue.submit(request).id
        except SceneDiffusionError as exc:  # the add-on's job runner reports BackendErrors to the artist
            raise BackendError(str(exc)) from None

    def status(self, job_id: str, wait: float = 0.0, after_step: int = 0) -> JobOut:
        job = self.queue.get(job_id)
        if wait:
            self.queue.wait_for_change(job, after_step, wait)
        preview = None
        if job.preview is not None:
            buffer = io.BytesIO()
            job.preview.save(buffer, format="PNG")
            preview = buffer.getvalue()
        return JobOut(id=job.id, state=job.state, mode=job.request.mode, step=job.step, total=job.total,
                      queue_position=self.queue.position(job), images=len(job.images), preview=preview,
                      error=job.error, seeds=tuple(job.seeds), expired=job.expired)

    def images(self, job_id: str, count: int) -> list[bytes]:
        return list(self.queue.get(job_id).images[:count])

    def cancel(self, job_id: str) -> None:
        self.queue.cancel(self.queue.get(job_id))

    def close(self) -> None:
        self.queue.close()
