/// A point as a replica stores it: the user's id, the raw vector, and the payload as compact
/// JSON object text (validated by whoever accepted the write).
#[derive(Debug, Clone, PartialEq)]
pub struct PointData {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: Option<String>,
}

/// One search hit as a Searcher returns it, before the Merger's merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub vector: Option<Vec<f32>>,
    pub payload: Option<String>,
}
