//! Reading an ONNX file into tract with its weights held once.
//!
//! tract maps the file, decodes the whole protobuf from it (every weight
//! copied into a `Vec` while the mapped pages are resident too), then builds
//! its graph, copying each weight again into a tensor while the protobuf
//! still holds it: at its peak the weights three times over, 0.98 GB for the
//! full-size encoder's 0.46 GB. Here the protobuf is decoded from the file a
//! window at a time, each large weight is taken out of it before the graph
//! is built and handed back through tract's external-data hook, which lets
//! it go as soon as its tensor is made: the weights once, plus the largest.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Buf;
use prost::Message;
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::model::ParseResult;
use tract_onnx::pb::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use tract_onnx::prelude::*;

/// Weights smaller than this stay in the protobuf: moving them saves nothing.
const MOVED_BYTES: usize = 64 * 1024;

/// Bytes of the file read at a time while decoding.
const WINDOW: usize = 1 << 20;

/// Load `path` as tract's `model_for_path` does, holding its weights once.
pub(crate) fn load(path: &Path) -> TractResult<InferenceModel> {
    let onnx = tract_onnx::onnx();
    // tract checks that external data lies inside the model's directory once
    // links are resolved: name the file where it really is (a pack may link
    // its files from elsewhere).
    let real = path
        .canonicalize()
        .map_err(|e| TractError::msg(format!("reading {}: {e}", path.display())))?;
    let dir = real.parent().map(|d| d.to_str());
    let file = real.file_name().and_then(|f| f.to_str());
    let (Some(Some(dir)), Some(file)) = (dir, file) else {
        // tract needs the directory as UTF-8 to read external data: a path
        // that is not gets the plain load.
        return onnx.model_for_path(path);
    };
    let mut proto = decode(path)?;
    let moved = Moved::default();
    if let Some(graph) = proto.graph.as_mut() {
        let mut held = moved
            .0
            .lock()
            .map_err(|_| TractError::msg("poisoned weight store"))?;
        for (key, tensor) in graph.initializer.iter_mut().enumerate() {
            if tensor.raw_data.len() < MOVED_BYTES {
                continue;
            }
            let data = std::mem::take(&mut tensor.raw_data);
            // tract resolves `location` within the model's directory and
            // insists that it exists: the file itself is named; `offset` is
            // only the key `Moved` finds the weight by.
            tensor.data_location = Some(DataLocation::External as i32);
            tensor.external_data = [("location", file.to_string()), ("offset", key.to_string())]
                .into_iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.into(),
                    value,
                })
                .collect();
            held.insert(key, data);
        }
    }
    let onnx = tract_onnx::Onnx {
        provider: Arc::new(moved),
        ..onnx
    };
    let ParseResult {
        model,
        unresolved_inputs,
        ..
    } = onnx.parse(&proto, Some(dir))?;
    if !unresolved_inputs.is_empty() {
        return Err(TractError::msg(format!(
            "could not resolve inputs at top level: {unresolved_inputs:?}"
        )));
    }
    Ok(model)
}

/// Decode the ONNX protobuf in `path`, reading it a window at a time.
fn decode(path: &Path) -> TractResult<ModelProto> {
    let mut file = File::open(path)
        .and_then(FileBuf::new)
        .map_err(|e| TractError::msg(format!("reading {}: {e}", path.display())))?;
    let decoded = ModelProto::decode(&mut file);
    // A read error ends the buffer early: report it rather than the
    // decoder's "buffer underflow".
    if let Some(e) = file.error.take() {
        return Err(TractError::msg(format!("reading {}: {e}", path.display())));
    }
    decoded.map_err(|e| TractError::msg(format!("decoding {} as ONNX: {e}", path.display())))
}

/// A file as a [`Buf`]: one window of it in memory, refilled as it is consumed.
struct FileBuf {
    file: File,
    window: Vec<u8>,
    /// Consumed bytes of `window`.
    at: usize,
    /// Bytes of the file not read yet.
    unread: usize,
    /// The read error that cut the file short, if one did.
    error: Option<io::Error>,
}

impl FileBuf {
    fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let unread = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = Self {
            file,
            window: Vec::with_capacity(WINDOW.min(unread)),
            at: 0,
            unread,
            error: None,
        };
        buf.refill();
        Ok(buf)
    }

    /// Read the next window (the current one is consumed). On an error the
    /// rest of the file is given up: `remaining` becomes 0 and decoding fails.
    fn refill(&mut self) {
        let n = WINDOW.min(self.unread);
        self.window.resize(n, 0);
        self.at = 0;
        match self.file.read_exact(&mut self.window) {
            Ok(()) => self.unread -= n,
            Err(e) => {
                self.window.clear();
                self.unread = 0;
                self.error = Some(e);
            }
        }
    }
}

impl Buf for FileBuf {
    fn remaining(&self) -> usize {
        self.window.len() - self.at + self.unread
    }

    fn chunk(&self) -> &[u8] {
        &self.window[self.at..]
    }

    fn advance(&mut self, mut cnt: usize) {
        // Keeps `chunk` non-empty while anything remains, as `Buf` requires.
        loop {
            let here = self.window.len() - self.at;
            if cnt < here {
                self.at += cnt;
                return;
            }
            cnt -= here;
            self.at = self.window.len();
            if self.unread == 0 {
                return;
            }
            self.refill();
        }
    }
}

/// The weights taken out of the protobuf, by initializer index, each handed
/// out once.
#[derive(Default)]
struct Moved(Mutex<HashMap<usize, Vec<u8>>>);

impl ModelDataResolver for Moved {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        _path: &Path,
        offset: usize,
        _length: Option<usize>,
    ) -> TractResult<()> {
        let mut held = self
            .0
            .lock()
            .map_err(|_| TractError::msg("poisoned weight store"))?;
        *buf = held.remove(&offset).ok_or_else(|| {
            TractError::msg(format!("initializer {offset} was not moved, or was read twice"))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::konst::Const;

    fn consts(model: &TypedModel) -> Vec<(String, Arc<Tensor>)> {
        model
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<Const>().map(|c| (n.name.clone(), c.val().clone())))
            .collect()
    }

    fn tiny(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/tiny")
            .join(file)
    }

    #[test]
    fn decoding_a_window_at_a_time_gives_tracts_message() {
        // text.onnx is 6.5 MB: its weights cross several windows.
        for file in ["encoder.onnx", "text.onnx"] {
            let ours = decode(&tiny(file)).unwrap();
            let tracts = tract_onnx::onnx().proto_model_for_path(tiny(file)).unwrap();
            assert!(ours == tracts, "{file} decodes differently");
        }
    }

    #[test]
    fn a_linked_file_loads_as_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("encoder.onnx");
        std::os::unix::fs::symlink(tiny("encoder.onnx"), &link).unwrap();
        let ours = consts(&load(&link).unwrap().into_typed().unwrap());
        assert!(!ours.is_empty());
    }

    #[test]
    fn a_truncated_file_is_an_error() {
        let whole = std::fs::read(tiny("text.onnx")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("text.onnx");
        std::fs::write(&cut, &whole[..whole.len() / 2 + 3]).unwrap();
        let e = load(&cut).unwrap_err().to_string();
        assert!(e.contains("decoding") && e.contains("text.onnx"), "{e}");
    }

    #[test]
    fn the_graph_is_the_one_tract_reads_itself() {
        for file in ["encoder.onnx", "text.onnx"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/tiny")
                .join(file);
            let ours = consts(&load(&path).unwrap().into_typed().unwrap());
            let tracts = consts(
                &tract_onnx::onnx()
                    .model_for_path(&path)
                    .unwrap()
                    .into_typed()
                    .unwrap(),
            );
            let moved = ours
                .iter()
                .filter(|(_, t)| t.len() * t.datum_type().size_of() >= MOVED_BYTES);
            assert!(moved.count() > 0, "{file} has no weight large enough to move");
            assert_eq!(ours.len(), tracts.len(), "{file}");
            for ((a, x), (b, y)) in ours.iter().zip(&tracts) {
                assert_eq!(a, b, "{file}");
                assert_eq!(x, y, "{file}: constant {a} differs");
            }
        }
    }
}
