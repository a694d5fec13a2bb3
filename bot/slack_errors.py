"""Slack Web API error codes the bot knows, in one place (the notifier decides what to retry from
them; metrics keep their labels to them)."""

# Errors that retrying will not fix: tell the user, stop trying.
PERMANENT_SLACK_ERRORS = frozenset(
    {
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "invalid_auth",
        "token_revoked",
        "account_inactive",
        "not_authed",
        "missing_scope",
        "restricted_action",
        "msg_too_long",
        "invalid_blocks",
        "message_not_found",
        "cant_update_message",
        "team_access_not_granted",
        "ekm_access_denied",
        "no_permission",
        "org_login_required",
    }
)

# Every error code the metrics label by name (anything else is counted as "other").
KNOWN_SLACK_ERRORS = PERMANENT_SLACK_ERRORS | frozenset(
    {
        "ratelimited",
        "fatal_error",
        "internal_error",
        "service_unavailable",
        "request_timeout",
        "no_text",
        "invalid_arguments",
    }
)
