//! The schema's failure domain.

/// Why a document could not be read, written or imported as a typed value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The document does not have the shape of the type.
    #[error("document does not match the schema: {0}")]
    Hydrate(Box<autosurgeon::HydrateError>),
    /// Writing the value into the document failed.
    #[error("cannot write the value: {0}")]
    Reconcile(Box<autosurgeon::ReconcileError>),
    /// automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(Box<automerge::AutomergeError>),
    /// Imported JSON is not valid for the document kind.
    #[error("invalid {kind} JSON: {message}")]
    Json { kind: &'static str, message: String },
    /// A path does not name a value in the document.
    #[error("no value at {0}")]
    NoSuchPath(String),
    /// An unknown document kind name.
    #[error("unknown document kind {0:?} (expected schedule, dashboard, widget or inbox)")]
    UnknownKind(String),
}

// The wrapped errors are large; boxing keeps every Result<_, SchemaError> small.
impl From<autosurgeon::HydrateError> for SchemaError {
    fn from(e: autosurgeon::HydrateError) -> Self {
        SchemaError::Hydrate(Box::new(e))
    }
}

impl From<autosurgeon::ReconcileError> for SchemaError {
    fn from(e: autosurgeon::ReconcileError) -> Self {
        SchemaError::Reconcile(Box::new(e))
    }
}

impl From<automerge::AutomergeError> for SchemaError {
    fn from(e: automerge::AutomergeError) -> Self {
        SchemaError::Automerge(Box::new(e))
    }
}
