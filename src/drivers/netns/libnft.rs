//! nftables through libnftables (the library behind the `nft` command), in process: its JSON
//! API, without starting an `nft` process for each read and each change. The library is
//! loaded at first use (`libnftables.so.1`, shipped with nftables). Each thread keeps one
//! context, so its commands act on the network namespace the thread was in at its first
//! command, like `nft` started there: smig calls this from namespace threads only, which
//! never change namespace.

use libloading::{Library, Symbol};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

/// `NFT_CTX_OUTPUT_JSON` of `<nftables/libnftables.h>`.
const OUTPUT_JSON: c_uint = 1 << 4;
const LIBRARY: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    output_set_flags: SetFlags,
    buffer_output: Buffer,
    buffer_error: Buffer,
    output_buffer: GetBuffer,
    error_buffer: GetBuffer,
    run_cmd: RunCmd,
    /// Keeps the functions above loaded.
    _lib: Library,
}

fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: loading the system's libnftables runs no initialisation with preconditions.
        let lib = unsafe { Library::new(LIBRARY) }
            .map_err(|e| format!("cannot load {LIBRARY} (install nftables): {e}"))?;
        // Each symbol has the C signature of libnftables' public API (stable since nftables
        // 0.9) that its type states.
        {
            fn get<T: Copy>(lib: &Library, name: &[u8]) -> Result<T, String> {
                // SAFETY: the caller names a symbol of the type `T`.
                let s: Symbol<T> = unsafe { lib.get(name) }.map_err(|e| {
                    format!(
                        "{LIBRARY}: no {}: {e}",
                        String::from_utf8_lossy(&name[..name.len().saturating_sub(1)])
                    )
                })?;
                Ok(*s)
            }
            Ok(Api {
                ctx_new: get(&lib, b"nft_ctx_new\0")?,
                ctx_free: get(&lib, b"nft_ctx_free\0")?,
                output_set_flags: get(&lib, b"nft_ctx_output_set_flags\0")?,
                buffer_output: get(&lib, b"nft_ctx_buffer_output\0")?,
                buffer_error: get(&lib, b"nft_ctx_buffer_error\0")?,
                output_buffer: get(&lib, b"nft_ctx_get_output_buffer\0")?,
                error_buffer: get(&lib, b"nft_ctx_get_error_buffer\0")?,
                run_cmd: get(&lib, b"nft_run_cmd_from_buffer\0")?,
                _lib: lib,
            })
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A libnftables context with buffered JSON output. It holds the netlink socket its commands
/// go through, opened in the network namespace of the thread that made it.
struct Context {
    ptr: *mut c_void,
    api: &'static Api,
}

impl Context {
    fn new(api: &'static Api) -> Result<Context, String> {
        // SAFETY: a context is created here and freed only by `Drop`; the flag and buffer
        // calls take the fresh, non-null context.
        unsafe {
            let ptr = (api.ctx_new)(0);
            if ptr.is_null() {
                return Err("nft_ctx_new failed".into());
            }
            (api.output_set_flags)(ptr, OUTPUT_JSON);
            (api.buffer_output)(ptr);
            (api.buffer_error)(ptr);
            Ok(Context { ptr, api })
        }
    }

    /// Runs `text` and returns (status, output, error). Reading a buffer rewinds it, so each
    /// command's output starts empty.
    fn run(&self, text: &CStr) -> (c_int, String, String) {
        // SAFETY: the context is alive (owned by `self`); the returned buffers belong to it
        // and are copied before the next command.
        unsafe {
            let rc = (self.api.run_cmd)(self.ptr, text.as_ptr());
            let read = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let out = read((self.api.output_buffer)(self.ptr));
            let err = read((self.api.error_buffer)(self.ptr));
            (rc, out, err)
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _turn = one_at_a_time();
        // SAFETY: made by `nft_ctx_new` in `Context::new`, freed once.
        unsafe { (self.api.ctx_free)(self.ptr) }
    }
}

/// libnftables keeps process-wide state (its context setup and teardown are not safe to run
/// at once on several threads): one call at a time. A poisoned lock only means a panic
/// elsewhere; the library holds nothing of that call.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This thread's context, made at its first command and kept until the thread ends. Its
    /// socket stays open: the kernel makes the close of a netfilter socket wait for the
    /// release of recently deleted rules and tables (an RCU grace period, ~10 ms, holding the
    /// namespace's nftables lock), so a context per command paid that after every deletion.
    static CONTEXT: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Runs `commands` (nft syntax or a JSON batch) with JSON output, as `nft -j -f -` would, in
/// the network namespace of the calling thread's context (see the module). Returns the output.
pub fn run(commands: &str) -> Result<String, String> {
    let api = api()?;
    let text = CString::new(commands).map_err(|_| "nft commands contain a NUL byte")?;
    let _turn = one_at_a_time();
    let (rc, out, err) = CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let ctx = match slot.as_ref() {
            Some(ctx) => ctx,
            None => slot.insert(Context::new(api)?),
        };
        Ok::<_, String>(ctx.run(&text))
    })?;
    if rc != 0 {
        let first = commands.lines().next().unwrap_or("").chars().take(80);
        return Err(format!("nft {}: {}", first.collect::<String>(), err.trim()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_library_and_reports_bad_commands_with_nfts_message() {
        // Parsing fails before anything touches the kernel, so this needs no privileges.
        let err = run("this is not nft").unwrap_err();
        assert!(
            err.contains("syntax error") || err.contains("Error"),
            "{err}"
        );
        assert!(run("a\0b").is_err());
    }

    #[test]
    fn a_kept_context_reports_each_command_alone() {
        // The thread's context outlives its commands: the second error must not carry the
        // first one's text.
        let first = run("first is not nft").unwrap_err();
        assert!(first.contains("first"), "{first}");
        let second = run("second is not nft").unwrap_err();
        assert!(second.contains("second"), "{second}");
        assert!(!second.contains("first"), "{second}");
    }
}
