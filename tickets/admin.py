from django.contrib import admin
from django.db import transaction

from tickets.models import Attachment, Message, Ticket, TicketSequence
from tickets.services import next_ticket_number


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    fields = ["kind", "author_contact", "author_user", "body_text", "delivery_status"]
    raw_id_fields = ["author_contact", "author_user"]


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ["number", "title", "tenant", "status", "priority", "team", "assignee",
                    "updated_at"]
    list_filter = ["status", "priority", "tenant"]
    search_fields = ["title", "contact__email"]
    raw_id_fields = ["contact", "merged_into", "assignee", "team"]
    readonly_fields = ["number"]
    inlines = [MessageInline]

    def save_model(self, request, obj, form, change):
        if not change:
            with transaction.atomic():
                obj.number = next_ticket_number(tenant=obj.tenant)
                obj.save()
            return
        super().save_model(request, obj, form, change)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "ticket", "kind", "delivery_status", "created_at", "tenant"]
    list_filter = ["kind", "delivery_status", "tenant"]
    raw_id_fields = ["ticket", "author_contact", "author_user"]


@admin.register(Attachment)
class AttachmentAdmin(admin.ModelAdmin):
    list_display = ["filename", "content_type", "size", "inline", "message", "tenant"]
    raw_id_fields = ["message"]


@admin.register(TicketSequence)
class TicketSequenceAdmin(admin.ModelAdmin):
    list_display = ["tenant", "last_number"]
