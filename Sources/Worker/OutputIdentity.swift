import AWSCore
import AWSServices

/// Which input, and which message, an uploaded output belongs to: kept in the object's own metadata
/// (`x-amz-meta-parallelizer-input`, `-message`), so that no input's result is ever stored under another's.
///
/// Outputs are written create-only (`If-None-Match: *`). When a key is taken already (412), what is there decides
/// (`OutputClash`): an upload of this very task that landed before its message came back is settled as done; an
/// earlier run of the same input is replaced, on the ETag just read; anything else (another input's result, or an
/// object parallelizer did not write) is never overwritten, and the task fails naming both inputs. Commands that
/// named their output `result-$$` did that silently: every command is PID 1 of its own namespace, so `$$` is 1.
struct OutputIdentity: Sendable, Equatable {
    static let inputField = "parallelizer-input"
    static let messageField = "parallelizer-message"
    /// S3 keeps at most 2 KB of user metadata: an input whose encoded name is longer is kept as its SHA-256.
    static let longestEncoded = 1500

    /// The input as its metadata says it: percent-encoded (S3 keeps metadata values as ASCII), or `sha256:<hex>`.
    var inputValue: String
    var messageID: String

    init(input: S3URI, messageID: String) {
        let encoded = URIEncoding.encode(input.description, keepSlash: true)
        inputValue =
            encoded.utf8.count <= Self.longestEncoded
            ? encoded : "sha256:" + Digest.sha256(Array(input.description.utf8)).hexString
        self.messageID = messageID
    }

    /// The identity read back from an object's metadata; nil when parallelizer did not write it.
    init?(metadata: [String: String]) {
        guard let value = metadata[Self.inputField], !value.isEmpty else { return nil }
        inputValue = value
        messageID = metadata[Self.messageField] ?? ""
    }

    /// The metadata an output is written with.
    var metadata: [(String, String)] { [(Self.inputField, inputValue), (Self.messageField, messageID)] }

    /// The input, for a reason an operator reads.
    var inputDescription: String {
        inputValue.hasPrefix("sha256:") ? "an input whose name hashes to \(inputValue)" : URIEncoding.decode(inputValue)
    }
}

/// What a create-only output write that found its key taken does, from the object that is there.
enum OutputClash: Sendable, Equatable {
    /// This input and this message: the task ran before, its upload landed, and its message came back before it
    /// was deleted. The output is there: the task is done.
    case landedBefore
    /// This input from another message (it was queued again): a new run of the input replaces its old output, on
    /// the ETag read, so that nothing written meanwhile is lost. Also an object parallelizer did not mark, when the
    /// operator says so (`adoptUnmarkedOutputs`: outputs of an earlier version).
    case replace(etag: String)
    /// Another input's output, or an object parallelizer did not write: never overwritten.
    case taken(by: String)

    static func judge(_ existing: S3ObjectHead, mine: OutputIdentity, adoptUnmarked: Bool = false) -> OutputClash {
        guard let theirs = OutputIdentity(metadata: existing.metadata) else {
            return adoptUnmarked ? .replace(etag: existing.etag) : .taken(by: "an object parallelizer did not write")
        }
        guard theirs.inputValue == mine.inputValue else {
            return .taken(by: "the output of \(theirs.inputDescription)")
        }
        return theirs.messageID == mine.messageID ? .landedBefore : .replace(etag: existing.etag)
    }
}
