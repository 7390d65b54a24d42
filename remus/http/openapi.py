"""The gateway's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Written by hand as a Python dict: the routes are few and stable, and a description that is
read here beside the handlers is easier to keep true than one generated from them.
``tests/test_http.py`` checks that it names every route the app serves.
"""

from __future__ import annotations

from typing import Any

from remus import __version__

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "one word: busy, no-worker, bad-body, ..."},
        "message": {"type": "string", "description": "what went wrong and what to do"},
    },
}
_FAILED = {
    "type": "object",
    "required": ["error", "message", "job", "status", "reason"],
    "properties": {
        "error": {"const": "job-failed"},
        "message": {"type": "string"},
        "job": {"type": "string"},
        "status": {"enum": ["FAILED", "TERMINATED", "EXPIRED"]},
        "reason": {"type": "string"},
        "traceback": {"type": "string"},
    },
}
_PROGRESS = {
    "type": ["object", "null"],
    "properties": {
        "seq": {"type": "integer"},
        "value": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        "message": {"type": "string"},
    },
}
_STATUS = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {
            "enum": ["QUEUED", "IN_PROGRESS", "FINISHED", "FAILED", "EXPIRED", "TERMINATED"]
        },
        "progress": {"$ref": "#/components/schemas/Progress"},
        "reason": {"type": "string"},
        "attempt": {"type": "integer"},
        "worker": {"type": "string"},
        "parent": {"type": "string"},
        "assistants": {"type": "array", "items": {"type": "string"}},
        "history": {"type": "array", "items": {"type": "string"}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


_JOB_HEADERS = {
    "X-Remus-Job": {"description": "the job's id", "schema": {"type": "string"}},
    "X-Remus-Status": {"description": "the job's status", "schema": {"type": "string"}},
}
_RESULT = {
    "description": "the result: its bytes; one file's bytes (Content-Disposition names it); "
    "several files as multipart/mixed, one part per file",
    "headers": _JOB_HEADERS,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/mixed": {"schema": {"type": "string", "format": "binary"}},
    },
}
_FAILED_RESPONSE = {
    "description": "the job failed, was terminated or expired",
    "headers": _JOB_HEADERS,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobFailed"}}},
}
_BODY = {
    "description": "the job's data as is (any content type), or multipart/form-data: parts "
    "with a filename are files (a file job; parts named 'args' are its arguments), other "
    "parts are named contents",
    "required": False,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object"}},
    },
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_JOB_PARAMS = [
    {"name": "input", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "output", "in": "path", "required": True, "schema": {"type": "string"}},
    _query("priority", "higher runs first", {"type": "integer"}),
    _query("wait_for_worker", "1: queue even if no worker serves it yet", {"enum": ["0", "1"]}),
    _query("worker", "only a worker of this name", {"type": "string"}),
    _query("tag", "only a worker with this tag (JSON)", {"type": "string"}),
    _query("time_limit", "seconds the job may run", {"type": "number"}),
    _query("queue_time_limit", "seconds the job may wait for a worker", {"type": "number"}),
]
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = {
    "400": _ref("BadRequest"),
    "401": _ref("Unauthorized"),
    "503": _ref("Unavailable"),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "remus HTTP gateway",
            "version": __version__,
            "description": "Submit jobs to a remus broker over HTTP and wait for them, or "
            "follow them. See docs/http.md.",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": {
                "Error": _ERROR,
                "JobFailed": _FAILED,
                "Progress": _PROGRESS,
                "Status": _STATUS,
            },
            "responses": {
                "BadRequest": _error("a bad parameter or body"),
                "Unauthorized": _error("no valid bearer token (remus http --tokens)"),
                "NotFound": _error("an unknown job, or an io type no worker serves"),
                "TooLarge": _error("the body is over remus http --max-body"),
                "Unavailable": {
                    **_error(
                        "busy (too many waiting requests of this io type, or the broker's "
                        "queue is full: retry after Retry-After seconds), or the broker "
                        "does not answer"
                    ),
                    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _paths() -> dict[str, Any]:
    status_json = {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}
    return {
        "/run/{input}/{output}": {
            "post": {
                "summary": "submit a job and wait for its result",
                "parameters": [
                    *_JOB_PARAMS,
                    _query("timeout", "seconds to wait before 504", {"type": "number"}),
                ],
                "requestBody": _BODY,
                "responses": {
                    "200": _RESULT,
                    "404": _ref("NotFound"),
                    "413": _ref("TooLarge"),
                    "422": _FAILED_RESPONSE,
                    "504": {
                        **_error("not done within ?timeout= (the job keeps running)"),
                        "headers": _JOB_HEADERS,
                    },
                    **_COMMON,
                },
            }
        },
        "/jobs/{input}/{output}": {
            "post": {
                "summary": "submit a job; follow it at Location",
                "parameters": _JOB_PARAMS,
                "requestBody": _BODY,
                "responses": {
                    "202": {
                        "description": "queued",
                        "headers": {"Location": {"schema": {"type": "string"}}, **_JOB_HEADERS},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["id", "location"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "location": {"type": "string"},
                                        "io_type": {"type": "string"},
                                        "status": {"const": "QUEUED"},
                                    },
                                }
                            }
                        },
                    },
                    "404": _ref("NotFound"),
                    "413": _ref("TooLarge"),
                    **_COMMON,
                },
            }
        },
        "/jobs/{id}": {
            "get": {
                "summary": "the job's status",
                "parameters": [_ID],
                "responses": {
                    "200": {"description": "its status", "content": status_json},
                    "404": _ref("NotFound"),
                    **_COMMON,
                },
            },
            "delete": {
                "summary": "terminate the job (a finished job stays finished)",
                "parameters": [_ID],
                "responses": {
                    "200": {"description": "its status after", "content": status_json},
                    "404": _ref("NotFound"),
                    **_COMMON,
                },
            },
        },
        "/jobs/{id}/result": {
            "get": {
                "summary": "the job's result",
                "parameters": [_ID],
                "responses": {
                    "200": _RESULT,
                    "404": _ref("NotFound"),
                    "409": _error("not finished yet"),
                    "422": _FAILED_RESPONSE,
                    **_COMMON,
                },
            }
        },
        "/jobs/{id}/progress": {
            "get": {
                "summary": "the job's progress as server-sent events, resumable",
                "description": "events 'progress' (id: the broker's sequence number, data: "
                "Progress), then 'end' (id: end, data: {id, status, reason}); 'error' if the "
                "broker goes silent. Resume with Last-Event-ID or ?since=.",
                "parameters": [
                    _ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    _query("since", "resume after this sequence number", {"type": "integer"}),
                ],
                "responses": {
                    "200": {
                        "description": "the event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "204": {"description": "Last-Event-ID was 'end': nothing more"},
                    "404": _ref("NotFound"),
                    **_COMMON,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "whether the broker answers (no token needed)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "it does",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": _error("it does not"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}
                },
            }
        },
        "/": {
            "get": {
                "summary": "the live dashboard (docs/dashboard.md); with --tokens and no token "
                "yet, its sign-in form",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {}}},
                    "401": {"description": "the sign-in form", "content": {"text/html": {}}},
                },
            }
        },
        "/login": {
            "post": {
                "summary": "sign the dashboard in: a token of the gateway's, as the form field "
                "'token', becomes the cookie remus_token, which opens the dashboard's own reads",
                "requestBody": {
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"token": {"type": "string"}},
                            }
                        }
                    }
                },
                "responses": {
                    "303": {"description": "signed in: back to /"},
                    "401": {"description": "not a token of the gateway's: the form again"},
                },
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "a file of the dashboard's page (script, style)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "the file"}, "404": _ref("NotFound")},
            }
        },
        "/api/stream": {
            "get": {
                "summary": "the dashboard's feed as server-sent events: 'history', then a "
                "'snapshot' of the broker every second",
                "responses": {
                    "200": {
                        "description": "the event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_COMMON,
                },
            }
        },
        "/api/jobs/{id}": {
            "get": {
                "summary": "one job for the dashboard: its status, attempts, history and "
                "progress updates (the latest 500), with its traceback once over",
                "parameters": [_ID],
                "responses": {
                    "200": {"description": "the job", "content": status_json},
                    "404": _ref("NotFound"),
                    **_COMMON,
                },
            }
        },
    }
