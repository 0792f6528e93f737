from django.core.management.base import BaseCommand

from helpdesk.demo import ADMIN_EMAIL, AGENT_EMAIL, DEMO_PASSWORD, seed_demo


class Command(BaseCommand):
    help = "Create or complete the demo workspaces (idempotent; never in prod)."

    def handle(self, *args, **options):
        report = seed_demo()
        self.stdout.write(f"Demo data: {report}")
        self.stdout.write(f"Logins: {ADMIN_EMAIL} / {DEMO_PASSWORD} (admin, superuser), "
                          f"{AGENT_EMAIL} / {DEMO_PASSWORD} (agent)")
