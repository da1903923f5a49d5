//! The OpenAPI 3.0.3 document of authd's REST routes, derived from the
//! compiled contract: the `google.api.http` rule of every RPC, mapped the way
//! Envoy's gRPC-JSON transcoder serves it (proto3 JSON mapping).
//!
//! Generated at build time so the document cannot disagree with the proto;
//! `docs/openapi.json` is a committed copy that a unit test keeps in step.

use std::collections::BTreeSet;
use std::error::Error;

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, FileDescriptor,
    Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{Map, Value, json};

type BoxError = Box<dyn Error>;

/// The package whose services are served over REST.
const PACKAGE: &str = "auth.v1";

/// The error body Envoy writes for a failed call (`convert_grpc_status`).
const STATUS: &str = "google.rpc.Status";

/// The detail messages authd puts into `google.rpc.Status.details`. Listed
/// as schemas although nothing `$ref`s them: an `Any` cannot point at its
/// possible types in OpenAPI 3.0, and clients still need their shapes.
const ERROR_DETAILS: &[&str] = &[
    "google.rpc.BadRequest",
    "google.rpc.ErrorInfo",
    "google.rpc.RetryInfo",
];

const STATUS_DESCRIPTION: &str = "A failed call: the gRPC status as Envoy's gRPC-JSON transcoder renders it \
(with `convert_grpc_status: true`). `code` is the gRPC status code (3 INVALID_ARGUMENT, 6 ALREADY_EXISTS, \
8 RESOURCE_EXHAUSTED, 16 UNAUTHENTICATED, ...). `details` carry google.rpc.ErrorInfo (machine-readable \
`reason`, domain \"authd\"), google.rpc.BadRequest (one violation per invalid field) and \
google.rpc.RetryInfo (when throttled), each tagged with its `@type`, e.g. \
`type.googleapis.com/google.rpc.ErrorInfo`; their schemas are under components.";

const ERROR_RESPONSE_DESCRIPTION: &str =
    "Error: a google.rpc.Status whose details carry ErrorInfo, BadRequest or RetryInfo.";

const BEARER_DESCRIPTION: &str = "An access token (JWT) from Login, Refresh or ChangePassword, sent as \
`Authorization: Bearer <token>`; the transcoder passes the header to authd as gRPC metadata.";

pub fn generate(pool: &DescriptorPool) -> Result<String, BoxError> {
    let http = pool.get_extension_by_name("google.api.http").ok_or(
        "google.api.http is not in the descriptor pool: does auth.proto import google/api/annotations.proto?",
    )?;
    let mut schemas = Schemas::new(pool);

    let mut services: Vec<_> = pool.services().filter(|s| s.package_name() == PACKAGE).collect();
    services.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    if services.is_empty() {
        return Err(format!("no service in package {PACKAGE}: nothing to describe").into());
    }

    let mut paths = Map::new();
    let mut tags = Vec::new();
    let mut service_docs = Vec::new();
    for service in &services {
        let doc = leading_comment(&service.parent_file(), service.path());
        let mut tag = Map::new();
        tag.insert("name".into(), service.name().into());
        if let Some(doc) = &doc {
            tag.insert("description".into(), doc.as_str().into());
            service_docs.push(doc.clone());
        }
        tags.push(Value::Object(tag));

        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                return Err(format!(
                    "{} has no google.api.http option: every RPC of {PACKAGE} needs a REST route \
                     (add `option (google.api.http) = {{...}};` to it in proto/auth.proto)",
                    method.full_name()
                )
                .into());
            }
            if method.is_client_streaming() {
                return Err(format!(
                    "{} streams requests: the OpenAPI generator maps unary and server-streaming RPCs only",
                    method.full_name()
                )
                .into());
            }
            let extension = options.get_extension(&http);
            let rule = extension
                .as_message()
                .ok_or_else(|| format!("{}: google.api.http is not an HttpRule", method.full_name()))?;
            let doc = MethodDoc::parse(
                leading_comment(&method.parent_file(), method.path()),
                method.full_name(),
            )?;

            // An additional binding is its own operation: same RPC, another
            // route, and operation ids must be unique.
            let mut bindings = vec![rule.clone()];
            bindings.extend(message_list(rule, "additional_bindings"));
            for (index, binding) in bindings.iter().enumerate() {
                let operation_id = match index {
                    0 => format!("{}_{}", service.name(), method.name()),
                    n => format!("{}_{}_{n}", service.name(), method.name()),
                };
                let (verb, template) = pattern(binding, method.full_name())?;
                let route = Route::parse(&template, method.full_name())?;
                let operation = schemas.operation(&method, binding, verb, &route, &doc, &operation_id)?;
                let item = paths
                    .entry(route.path.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(item) = item else {
                    return Err(format!("path item {} is not an object", route.path).into());
                };
                if item.contains_key(verb) {
                    return Err(format!(
                        "{}: {} {} is already the route of another RPC",
                        method.full_name(),
                        verb.to_uppercase(),
                        route.path
                    )
                    .into());
                }
                item.insert(verb.into(), operation);
            }
        }
    }

    let version = PACKAGE.rsplit('.').next().unwrap_or(PACKAGE);
    let mut info = Map::new();
    info.insert("title".into(), "authd REST API".into());
    info.insert("version".into(), version.into());
    if !service_docs.is_empty() {
        info.insert("description".into(), service_docs.join("\n\n").into());
    }

    let mut document = json!({
        "openapi": "3.0.3",
        "info": info,
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas.finish()?,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": BEARER_DESCRIPTION,
                },
            },
        },
    });
    // Sorted keys whether or not some crate turns on serde_json's
    // preserve_order: the text changes only when the contract does, so the
    // drift check never trips over a dependency update.
    document.sort_all_objects();
    let mut text = serde_json::to_string_pretty(&document)?;
    text.push('\n');
    Ok(text)
}

/// What a method's leading comment says, with the `Auth:` convention lines
/// turned into a security requirement instead of prose.
struct MethodDoc {
    summary: Option<String>,
    description: Option<String>,
    public: bool,
}

impl MethodDoc {
    fn parse(comment: Option<String>, method: &str) -> Result<Self, BoxError> {
        let comment = comment.unwrap_or_default();
        let (mut bearer, mut public) = (false, false);
        let mut kept = Vec::new();
        for line in comment.lines() {
            let lower = line.trim().to_ascii_lowercase();
            match lower.strip_prefix("auth:").map(str::trim_start) {
                Some(value) if value.starts_with("bearer") => bearer = true,
                Some(value) if value.starts_with("public") => public = true,
                // A removed line between two paragraphs would leave a
                // double gap.
                _ if line.trim().is_empty() && kept.last().is_some_and(|l: &&str| l.trim().is_empty()) => {}
                _ => kept.push(line),
            }
        }
        if bearer && public {
            return Err(format!("{method}: its comment says both `Auth: bearer` and `Auth: public`").into());
        }
        let description = kept.join("\n").trim().to_owned();
        let summary = first_sentence(&description);
        Ok(Self {
            summary,
            description: (!description.is_empty()).then_some(description),
            // Anything not marked public needs a bearer: a forgotten line
            // must not advertise a protected route as open.
            public,
        })
    }
}

/// The first sentence of the first paragraph, without its full stop.
fn first_sentence(text: &str) -> Option<String> {
    let paragraph = text
        .split("\n\n")
        .next()?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let sentence = match paragraph.find(". ") {
        Some(end) => &paragraph[..end],
        None => paragraph.strip_suffix('.').unwrap_or(&paragraph),
    };
    (!sentence.is_empty()).then(|| sentence.to_owned())
}

/// The comment protoc-style parsers keep for the element at `path`, with the
/// space after each `//` removed.
fn leading_comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let raw = location.leading_comments.as_deref()?;
    let text = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn message_list(message: &DynamicMessage, name: &str) -> Vec<DynamicMessage> {
    message
        .get_field_by_name(name)
        .and_then(|v| {
            v.as_list()
                .map(|items| items.iter().filter_map(|i| i.as_message().cloned()).collect())
        })
        .unwrap_or_default()
}

/// The OpenAPI operation key and the path template of an HttpRule.
fn pattern(rule: &DynamicMessage, method: &str) -> Result<(&'static str, String), BoxError> {
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            return Ok((verb, string_field(rule, verb)));
        }
    }
    if rule.has_field_by_name("custom") {
        let custom = rule
            .get_field_by_name("custom")
            .and_then(|v| v.as_message().cloned())
            .ok_or_else(|| format!("{method}: unreadable custom HTTP pattern"))?;
        let kind = string_field(&custom, "kind").to_ascii_lowercase();
        let verb = match kind.as_str() {
            "head" => "head",
            "options" => "options",
            "trace" => "trace",
            _ => {
                return Err(format!("{method}: custom HTTP method {kind:?} has no OpenAPI operation").into());
            }
        };
        return Ok((verb, string_field(&custom, "path")));
    }
    Err(format!("{method}: its google.api.http rule names no HTTP method and path").into())
}

/// A path template with its variables reduced to OpenAPI's `{name}` form.
struct Route {
    path: String,
    variables: Vec<Variable>,
}

struct Variable {
    /// Field path as the template spells it (proto names, dot-separated),
    /// which is also the OpenAPI parameter name.
    field_path: String,
    /// `{name=shelves/*}` and `**` match several segments, which an OpenAPI
    /// path parameter cannot say; the parameter's description does.
    segments: Option<String>,
}

impl Route {
    fn parse(template: &str, method: &str) -> Result<Self, BoxError> {
        if !template.starts_with('/') {
            return Err(format!("{method}: HTTP path {template:?} does not start with '/'").into());
        }
        let mut path = String::new();
        let mut variables = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            path.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{method}: unclosed '{{' in HTTP path {template:?}"))?;
            let inner = &after[..close];
            let (field_path, segments) = match inner.split_once('=') {
                Some((field, pattern)) => (field.trim(), Some(pattern.trim().to_owned())),
                None => (inner.trim(), None),
            };
            if field_path.is_empty() {
                return Err(format!("{method}: empty variable in HTTP path {template:?}").into());
            }
            path.push('{');
            path.push_str(field_path);
            path.push('}');
            variables.push(Variable {
                field_path: field_path.to_owned(),
                segments: segments.filter(|p| p != "*"),
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{method}: unmatched '}}' in HTTP path {template:?}").into());
        }
        path.push_str(rest);
        Ok(Self { path, variables })
    }
}

/// The `google.api.field_behavior` values the document reflects.
#[derive(Default, Clone, Copy)]
struct Behavior {
    required: bool,
    output_only: bool,
    input_only: bool,
}

struct Behaviors {
    extension: ExtensionDescriptor,
    required: Option<i32>,
    output_only: Option<i32>,
    input_only: Option<i32>,
}

impl Behaviors {
    fn new(pool: &DescriptorPool) -> Option<Self> {
        let extension = pool.get_extension_by_name("google.api.field_behavior")?;
        let number = |name: &str| match extension.kind() {
            Kind::Enum(e) => e.get_value_by_name(name).map(|v| v.number()),
            _ => None,
        };
        Some(Self {
            required: number("REQUIRED"),
            output_only: number("OUTPUT_ONLY"),
            input_only: number("INPUT_ONLY"),
            extension,
        })
    }

    fn of(&self, field: &FieldDescriptor) -> Behavior {
        let options = field.options();
        if !options.has_extension(&self.extension) {
            return Behavior::default();
        }
        let value = options.get_extension(&self.extension);
        let numbers: Vec<i32> = match value.as_list() {
            Some(items) => items
                .iter()
                .filter_map(prost_reflect::Value::as_enum_number)
                .collect(),
            None => value.as_enum_number().into_iter().collect(),
        };
        let has = |n: Option<i32>| n.is_some_and(|n| numbers.contains(&n));
        Behavior {
            required: has(self.required),
            output_only: has(self.output_only),
            input_only: has(self.input_only),
        }
    }
}

/// Component schemas, filled as operations reference messages.
struct Schemas {
    pool: DescriptorPool,
    behaviors: Option<Behaviors>,
    done: Map<String, Value>,
    pending: Vec<MessageDescriptor>,
}

impl Schemas {
    fn new(pool: &DescriptorPool) -> Self {
        Self {
            pool: pool.clone(),
            // Absent when no compiled file imports field_behavior.proto;
            // then no field has a behaviour, which is what the protos say.
            behaviors: Behaviors::new(pool),
            done: Map::new(),
            pending: Vec::new(),
        }
    }

    fn behavior(&self, field: &FieldDescriptor) -> Behavior {
        self.behaviors.as_ref().map(|b| b.of(field)).unwrap_or_default()
    }

    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        let name = message.full_name();
        if !self.done.contains_key(name) && !self.pending.iter().any(|m| m.full_name() == name) {
            self.pending.push(message.clone());
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn reference_by_name(&mut self, name: &str) -> Result<Value, BoxError> {
        let message = self
            .pool
            .get_message_by_name(name)
            .ok_or_else(|| format!("{name} is not in the descriptor pool (build.rs compiles it)"))?;
        Ok(self.reference(&message))
    }

    fn finish(mut self) -> Result<Map<String, Value>, BoxError> {
        for name in ERROR_DETAILS {
            self.reference_by_name(name)?;
        }
        while let Some(message) = self.pending.pop() {
            if self.done.contains_key(message.full_name()) {
                continue;
            }
            let schema = self.message_schema(&message);
            self.done.insert(message.full_name().to_owned(), schema);
        }
        // Enums are inlined where fields use them; listing them too keeps
        // the ones no field uses (ErrorInfo reasons travel as plain strings)
        // in the document.
        for e in self.pool.all_enums().filter(|e| e.package_name() == PACKAGE) {
            let mut schema = enum_schema(&e);
            if let (Some(doc), Value::Object(map)) =
                (leading_comment(&e.parent_file(), e.path()), &mut schema)
            {
                let description = match map.get("description").and_then(Value::as_str) {
                    Some(values) => format!("{doc}\n\n{values}"),
                    None => doc,
                };
                map.insert("description".into(), description.into());
            }
            self.done.insert(e.full_name().to_owned(), schema);
        }
        if let Some(Value::Object(status)) = self.done.get_mut(STATUS) {
            status.insert("description".into(), STATUS_DESCRIPTION.into());
        }
        Ok(self.done)
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let behavior = self.behavior(&field);
            if behavior.required {
                required.push(Value::from(field.json_name()));
            }
            let schema = self.field_schema(&field, behavior);
            properties.insert(field.json_name().to_owned(), schema);
        }
        // OpenAPI 3.0 has no "at most one of" that tolerates all members
        // absent (oneOf demands exactly one), so a oneof is stated in prose.
        let mut doc: Vec<String> = leading_comment(&message.parent_file(), message.path())
            .into_iter()
            .collect();
        for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
            let members: Vec<String> = oneof.fields().map(|f| format!("`{}`", f.json_name())).collect();
            doc.push(format!("At most one of {} is set.", members.join(", ")));
        }
        let mut schema = Map::new();
        schema.insert("type".into(), "object".into());
        if !doc.is_empty() {
            schema.insert("description".into(), doc.join("\n\n").into());
        }
        if !properties.is_empty() {
            schema.insert("properties".into(), properties.into());
        }
        if !required.is_empty() {
            schema.insert("required".into(), required.into());
        }
        schema.into()
    }

    fn field_schema(&mut self, field: &FieldDescriptor, behavior: Behavior) -> Value {
        let kind = field.kind();
        let schema = match &kind {
            Kind::Message(entry) if field.is_map() => {
                let value = entry.map_entry_value_field();
                json!({ "type": "object", "additionalProperties": self.kind_schema(&value.kind()) })
            }
            _ if field.is_list() => json!({ "type": "array", "items": self.kind_schema(&kind) }),
            _ => self.kind_schema(&kind),
        };
        let doc = leading_comment(&field.parent_file(), field.path());
        annotate(schema, doc, behavior)
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            // Above 2^31 - 1, so int32 would reject valid values.
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
            // proto3 JSON writes 64-bit integers as strings: JavaScript
            // numbers lose precision beyond 2^53.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(e) => enum_schema(e),
            Kind::Message(m) => self.message_or_well_known(m),
        }
    }

    fn message_or_well_known(&mut self, message: &MessageDescriptor) -> Value {
        well_known(message).unwrap_or_else(|| self.reference(message))
    }

    fn operation(
        &mut self,
        method: &MethodDescriptor,
        rule: &DynamicMessage,
        verb: &str,
        route: &Route,
        doc: &MethodDoc,
        operation_id: &str,
    ) -> Result<Value, BoxError> {
        let name = method.full_name();
        let input = method.input();
        let body = string_field(rule, "body");
        let response_body = string_field(rule, "response_body");
        if verb == "get" && !body.is_empty() {
            return Err(format!("{name}: a GET route cannot take a body (body: {body:?})").into());
        }

        let mut parameters = Vec::new();
        let mut bound = BTreeSet::new();
        for variable in &route.variables {
            let field = resolve_path(&input, &variable.field_path, name)?;
            let mut parameter = Map::new();
            parameter.insert("name".into(), variable.field_path.as_str().into());
            parameter.insert("in".into(), "path".into());
            parameter.insert("required".into(), true.into());
            let mut description = leading_comment(&field.parent_file(), field.path()).unwrap_or_default();
            if let Some(segments) = &variable.segments {
                if !description.is_empty() {
                    description.push_str("\n\n");
                }
                description.push_str(&format!("Matches `{segments}` (may contain '/')."));
            }
            if !description.is_empty() {
                parameter.insert("description".into(), description.into());
            }
            parameter.insert("schema".into(), self.kind_schema(&field.kind()));
            parameters.push(Value::Object(parameter));
            bound.insert(variable.field_path.clone());
        }

        let mut operation = Map::new();
        operation.insert("operationId".into(), operation_id.into());
        operation.insert("tags".into(), json!([method.parent_service().name()]));
        if let Some(summary) = &doc.summary {
            operation.insert("summary".into(), summary.as_str().into());
        }
        if let Some(description) = &doc.description {
            operation.insert("description".into(), description.as_str().into());
        }

        let body_schema = match body.as_str() {
            "" => {
                self.query_parameters(&input, &QueryScope::root(&input, &bound, None), &mut parameters);
                None
            }
            "*" if bound.is_empty() => Some(self.message_or_well_known(&input)),
            "*" => Some(self.body_without(&input, &bound)),
            field_name => {
                let field = input.get_field_by_name(field_name).ok_or_else(|| {
                    format!(
                        "{name}: body field {field_name:?} is not in {}",
                        input.full_name()
                    )
                })?;
                self.query_parameters(
                    &input,
                    &QueryScope::root(&input, &bound, Some(field_name)),
                    &mut parameters,
                );
                let behavior = self.behavior(&field);
                Some(self.field_schema(&field, behavior))
            }
        };
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }
        if let Some(schema) = body_schema {
            operation.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
            );
        }

        let output = method.output();
        let response_schema = match response_body.as_str() {
            "" => self.message_or_well_known(&output),
            field_name => {
                let field = output.get_field_by_name(field_name).ok_or_else(|| {
                    format!(
                        "{name}: response_body field {field_name:?} is not in {}",
                        output.full_name()
                    )
                })?;
                let behavior = self.behavior(&field);
                self.field_schema(&field, behavior)
            }
        };
        // A gateway sends a server stream as one JSON array whose elements
        // arrive as the messages do (Envoy's transcoder does).
        let (response_schema, ok) = if method.is_server_streaming() {
            (
                json!({ "type": "array", "items": response_schema }),
                "OK: a JSON array, streamed; each element arrives as authd sends it",
            )
        } else {
            (response_schema, "OK")
        };
        let status = self.reference_by_name(STATUS)?;
        operation.insert(
            "responses".into(),
            json!({
                "200": {
                    "description": ok,
                    "content": { "application/json": { "schema": response_schema } },
                },
                "default": {
                    "description": ERROR_RESPONSE_DESCRIPTION,
                    "content": { "application/json": { "schema": status } },
                },
            }),
        );
        let security = if doc.public {
            json!([])
        } else {
            json!([{ "bearerAuth": [] }])
        };
        operation.insert("security".into(), security);
        Ok(operation.into())
    }

    /// The request message as a body when some of its fields travel in the
    /// path instead: those are left out, as the transcoder ignores them there.
    fn body_without(&mut self, input: &MessageDescriptor, bound: &BTreeSet<String>) -> Value {
        let mut schema = self.message_schema(input);
        if let Some(Value::Object(properties)) = schema.get_mut("properties") {
            for field in input.fields().filter(|f| bound.contains(f.name())) {
                properties.remove(field.json_name());
            }
        }
        if let Some(Value::Array(required)) = schema.get_mut("required") {
            let path_bound: Vec<_> = input
                .fields()
                .filter(|f| bound.contains(f.name()))
                .map(|f| f.json_name().to_owned())
                .collect();
            required.retain(|r| r.as_str().is_none_or(|r| !path_bound.iter().any(|p| p == r)));
        }
        // OpenAPI 3.0 allows no empty `required` list.
        if schema
            .get("required")
            .is_some_and(|r| r.as_array().is_some_and(Vec::is_empty))
            && let Some(object) = schema.as_object_mut()
        {
            object.remove("required");
        }
        schema
    }

    /// Every request field the path and body leave over, as the transcoder
    /// reads it from the query string: scalars by dotted path into nested
    /// messages. Maps, repeated messages and free-form types have no query
    /// form and are left out.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        scope: &QueryScope<'_>,
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            let proto_path = scope.join_proto(field.name());
            if scope.bound.contains(&proto_path)
                || (scope.proto_prefix.is_empty() && scope.body_field == Some(field.name()))
                || field.is_map()
            {
                continue;
            }
            let json_path = scope.join_json(field.json_name());
            let leaf = match field.kind() {
                Kind::Message(m) => match query_scalar(&m) {
                    Some(schema) => schema,
                    None => {
                        if !field.is_list() && !scope.stack.iter().any(|s| s == m.full_name()) {
                            let inner = scope.nested(&proto_path, &json_path, m.full_name());
                            self.query_parameters(&m, &inner, out);
                        }
                        continue;
                    }
                },
                kind => self.kind_schema(&kind),
            };
            let schema = if field.is_list() {
                json!({ "type": "array", "items": leaf })
            } else {
                leaf
            };
            let mut parameter = Map::new();
            parameter.insert("name".into(), json_path.into());
            parameter.insert("in".into(), "query".into());
            if scope.proto_prefix.is_empty() && self.behavior(&field).required {
                parameter.insert("required".into(), true.into());
            }
            if let Some(doc) = leading_comment(&field.parent_file(), field.path()) {
                parameter.insert("description".into(), doc.into());
            }
            parameter.insert("schema".into(), schema);
            out.push(Value::Object(parameter));
        }
    }
}

/// Where a recursive walk for query parameters stands.
struct QueryScope<'a> {
    bound: &'a BTreeSet<String>,
    body_field: Option<&'a str>,
    proto_prefix: String,
    json_prefix: String,
    /// Messages already being walked: a recursive message would otherwise
    /// yield parameters forever.
    stack: Vec<String>,
}

impl<'a> QueryScope<'a> {
    fn root(request: &MessageDescriptor, bound: &'a BTreeSet<String>, body_field: Option<&'a str>) -> Self {
        Self {
            bound,
            body_field,
            proto_prefix: String::new(),
            json_prefix: String::new(),
            stack: vec![request.full_name().to_owned()],
        }
    }

    fn nested(&self, proto_path: &str, json_path: &str, message: &str) -> Self {
        let mut stack = self.stack.clone();
        stack.push(message.to_owned());
        Self {
            bound: self.bound,
            body_field: self.body_field,
            proto_prefix: proto_path.to_owned(),
            json_prefix: json_path.to_owned(),
            stack,
        }
    }

    fn join_proto(&self, name: &str) -> String {
        join(&self.proto_prefix, name)
    }

    fn join_json(&self, name: &str) -> String {
        join(&self.json_prefix, name)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The field a path variable binds, which must be a single scalar.
fn resolve_path(
    input: &MessageDescriptor,
    field_path: &str,
    method: &str,
) -> Result<FieldDescriptor, BoxError> {
    let mut message = input.clone();
    let mut parts = field_path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message.get_field_by_name(part).ok_or_else(|| {
            format!(
                "{method}: path variable {field_path:?}: no field {part:?} in {}",
                message.full_name()
            )
        })?;
        if field.is_list() || field.is_map() {
            return Err(format!("{method}: path variable {field_path:?} is repeated").into());
        }
        match (field.kind(), parts.peek().is_some()) {
            (Kind::Message(next), true) => message = next,
            (_, true) => {
                return Err(
                    format!("{method}: path variable {field_path:?}: {part:?} is not a message").into(),
                );
            }
            (Kind::Message(m), false) if query_scalar(&m).is_none() => {
                return Err(
                    format!("{method}: path variable {field_path:?} is a message, not a scalar").into(),
                );
            }
            (_, false) => return Ok(field),
        }
    }
    Err(format!("{method}: empty path variable").into())
}

/// Adds what the field declaration says to a type's schema. OpenAPI 3.0
/// ignores siblings of `$ref`, so a reference is wrapped in `allOf` first.
fn annotate(schema: Value, doc: Option<String>, behavior: Behavior) -> Value {
    if doc.is_none() && !behavior.output_only && !behavior.input_only {
        return schema;
    }
    let mut schema = match schema {
        Value::Object(map) if !map.contains_key("$ref") => map,
        other => {
            let mut wrapper = Map::new();
            wrapper.insert("allOf".into(), json!([other]));
            wrapper
        }
    };
    if let Some(doc) = doc {
        // An enum's own value list stays below the field's description.
        let description = match schema.get("description").and_then(Value::as_str) {
            Some(values) => format!("{doc}\n\n{values}"),
            None => doc,
        };
        schema.insert("description".into(), description.into());
    }
    if behavior.output_only {
        schema.insert("readOnly".into(), true.into());
    }
    if behavior.input_only {
        schema.insert("writeOnly".into(), true.into());
    }
    schema.into()
}

/// proto3 JSON writes enum values by name.
fn enum_schema(e: &EnumDescriptor) -> Value {
    if e.full_name() == "google.protobuf.NullValue" {
        return json!({ "description": "JSON null." });
    }
    let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
    let documented: Vec<String> = e
        .values()
        .filter_map(|v| {
            leading_comment(&v.parent_file(), v.path()).map(|doc| {
                format!(
                    "- `{}`: {}",
                    v.name(),
                    doc.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
        })
        .collect();
    let mut schema = Map::new();
    schema.insert("type".into(), "string".into());
    schema.insert("enum".into(), json!(names));
    if !documented.is_empty() {
        schema.insert("description".into(), documented.join("\n").into());
    }
    schema.into()
}

/// Well-known types that a query string or path segment can carry.
fn query_scalar(message: &MessageDescriptor) -> Option<Value> {
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string" }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.DoubleValue" => json!({ "type": "number", "format": "double", "nullable": true }),
        "google.protobuf.FloatValue" => json!({ "type": "number", "format": "float", "nullable": true }),
        "google.protobuf.Int32Value" => json!({ "type": "integer", "format": "int32", "nullable": true }),
        "google.protobuf.UInt32Value" => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "nullable": true })
        }
        "google.protobuf.Int64Value" => json!({ "type": "string", "format": "int64", "nullable": true }),
        "google.protobuf.UInt64Value" => json!({ "type": "string", "format": "uint64", "nullable": true }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean", "nullable": true }),
        "google.protobuf.StringValue" => json!({ "type": "string", "nullable": true }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "format": "byte", "nullable": true }),
        _ => return None,
    };
    Some(schema)
}

/// Well-known types whose proto3 JSON form is not an object of their fields.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    if let Some(schema) = query_scalar(message) {
        return Some(schema);
    }
    let schema = match message.full_name() {
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {
                "@type": {
                    "type": "string",
                    "description": "The message type, e.g. `type.googleapis.com/google.rpc.ErrorInfo`.",
                },
            },
            "required": ["@type"],
            "additionalProperties": true,
        }),
        _ => return None,
    };
    Some(schema)
}
