//! AddToStore before protocol 1.25: the content is always a NAR on the stream,
//! unframed; flat content is the NAR of one regular file.

use std::collections::BTreeSet;
use std::io::Read;

use unrooted_format::{nar, FileIngestionMethod};
use unrooted_protocol::request::ContentAddressMethod;
use unrooted_store::ValidPathInfo;

use super::{client, fatal, Reader, Result};
use crate::session::Session;

/// The largest flat file accepted through the pre-1.25 AddToStore, whose NAR must be
/// unpacked in memory.
const MAX_LEGACY_FLAT: u64 = 64 << 20;

/// AddToStore before 1.25: always a NAR on the stream; flat content is the NAR of one
/// regular file.
pub(super) fn add_to_store_legacy(
    s: &Session<'_>,
    name: &str,
    method: ContentAddressMethod,
    reader: &mut Reader,
) -> Result<ValidPathInfo> {
    let store = &s.state.store;
    let none = BTreeSet::new();
    // Paths computed from the content: see `add_to_store`.
    let _adding = s.state.gc_barrier.adding();
    let info = match method {
        ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Recursive,
            algo,
        } => {
            // The NAR reader stops exactly at the end of the archive, so the stream is
            // in step after a success; after a failure its position is unknown.
            store
                .add_ca(
                    name,
                    FileIngestionMethod::Recursive,
                    algo,
                    &mut *reader,
                    &none,
                    false,
                )
                .map_err(|e| fatal(&e))
        }
        ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Flat,
            algo,
        } => {
            let mut contents = FlatFile {
                data: Vec::new(),
                files: 0,
                too_big: false,
            };
            nar::read_nar(&mut *reader, &mut contents).map_err(|e| fatal(&e))?;
            if contents.files != 1 || contents.too_big {
                return Err(client(format!(
                    "flat addition of '{name}' needs one regular file of at most {MAX_LEGACY_FLAT} bytes"
                )));
            }
            Ok(store.add_ca(
                name,
                FileIngestionMethod::Flat,
                algo,
                &mut contents.data.as_slice(),
                &none,
                false,
            )?)
        }
        ContentAddressMethod::Text => Err(client("text content must be added with AddTextToStore")),
    }?;
    s.add_temp_root(&info.path);
    Ok(info)
}

/// Collects the single regular file of a flat legacy upload.
struct FlatFile {
    data: Vec<u8>,
    files: usize,
    too_big: bool,
}

impl nar::NarVisitor for FlatFile {
    fn regular(
        &mut self,
        _path: &nar::NarPath,
        _executable: bool,
        contents: &mut nar::Contents<'_>,
    ) -> std::result::Result<(), nar::NarError> {
        self.files += 1;
        if contents.size() > MAX_LEGACY_FLAT || self.files > 1 {
            self.too_big = true;
            return Ok(());
        }
        let offset = contents.nar_offset();
        contents
            .read_to_end(&mut self.data)
            .map_err(|source| nar::NarError::Read { offset, source })?;
        Ok(())
    }
}
