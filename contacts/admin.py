from django.contrib import admin

from contacts.models import Contact


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["email", "name", "tenant", "source", "created_at"]
    list_filter = ["source", "tenant"]
    search_fields = ["email", "name"]
