"""URLconf of the bare view bench/webhook.py compares the webhook with: the same path and
the same middleware, a view that publishes one Celery task and answers 204."""

from __future__ import annotations

import uuid

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from helpdesk.tasks import ping


@csrf_exempt
@require_POST
def publish_one_task(request):
    ping.delay(key=f"bench-bare:{uuid.uuid4().hex}", value="1")
    return HttpResponse(status=204)


urlpatterns = [path("webhooks/google/pubsub/", publish_one_task)]
