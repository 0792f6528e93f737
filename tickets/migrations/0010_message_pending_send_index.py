from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking the message table against writes; CONCURRENTLY cannot run in
    # a transaction, so this migration holds nothing else (a failed build leaves only an
    # invalid index to drop, and no half-applied migration).
    atomic = False

    dependencies = [
        ('tickets', '0009_message_retried_at'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='message',
            index=models.Index(condition=models.Q(('delivery_status', 'pending')),
                               fields=['created_at'], name='message_pending_send'),
        ),
    ]
