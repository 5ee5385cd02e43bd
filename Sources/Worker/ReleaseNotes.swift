import AWSCore
import AWSServices
import Logging
import TaskLedger

/// The daemon's own record of the receives it gave back without a run, so that `maxAttempts` counts runs, not
/// receives.
///
/// SQS counts every receive (`ApproximateReceiveCount`), and the daemon gives messages back unrun for reasons of its
/// own: a message held too long behind a slow task, the rest of a receive behind a long command, a stop, a spot
/// notice, a full disk. Counted as attempts, those would push a message past `maxAttempts` without it ever having
/// run, and it would be given up unrun. So each such release leaves a note, an empty object
/// `<outputPrefix>_parallelizer/releases/<message id>/<receive count>`; a message on its last attempts reads its
/// notes (one listing, only then), and its runs are its receives less its notes.
///
/// A receive that ended any other way counts as a run: one whose command failed, and one whose daemon died with it
/// (a command that takes its instance down must not be tried forever). With a ledger, only runs that failed count
/// (`MessageProcessor.runsBefore`). The dead-letter queue's `maxReceiveCount`
/// (`scripts/setup-aws --max-attempts`) leaves headroom above `maxAttempts` for the releases.
struct ReleaseNotes<Store: ObjectStore>: Sendable {
    let store: Store
    let bucket: String
    /// `<outputPrefix>_parallelizer/releases/`.
    let prefix: String

    func folder(_ message: SQSMessage) -> String { prefix + message.messageID + "/" }

    /// Notes that this receive of `message` ends without a run. A note that cannot be written is said once per
    /// release: that release then counts as an attempt.
    func note(_ message: SQSMessage, logger: Logger) async {
        await note(messageID: message.messageID, receiveCount: message.receiveCount, logger: logger)
    }

    /// Notes that receive `receiveCount` of message `messageID` counts as no run.
    func note(messageID: String, receiveCount: Int, logger: Logger) async {
        let object = S3URI(bucket: bucket, key: prefix + messageID + "/" + String(receiveCount))
        do {
            try await store.put(
                [], to: object, contentType: "application/octet-stream", onlyIfAbsent: true, logger: logger)
        } catch  where error.httpStatus == 412 {
            // Noted already.
        } catch {
            logger.warning(
                "could not note that the message was given back unrun: this receive counts as an attempt",
                metadata: ["s3.key": "\(object.key)", "error": "\(error)"])
        }
    }

    /// What the notes say of a message's earlier receives.
    enum Reading: Sendable, Equatable {
        /// Which of them ended without a run (their receive counts).
        case released(Set<Int>)
        /// The notes cannot be read, for good (denied: no `s3:ListBucket`): every receive counts as a run.
        case unreadable
        /// Not now (a throttle, a 5xx, the network): no verdict on the message from this receive.
        case notNow
    }

    /// Which of `message`'s receives before this one ended without a run.
    func releasesBefore(_ message: SQSMessage, logger: Logger) async -> Reading {
        let keys: [String]
        do {
            keys = try await store.keys(under: S3URI(bucket: bucket, key: folder(message)), logger: logger)
        } catch  where error.isRetryable {
            logger.warning(
                "cannot read the notes of this message's unrun receives now", metadata: ["error": "\(error)"])
            return .notNow
        } catch {
            logger.warning(
                """
                cannot read the notes of this message's unrun receives: every receive counts as an attempt \
                (the role needs s3:ListBucket on the output bucket)
                """,
                metadata: ["error": "\(error)"])
            return .unreadable
        }
        return .released(
            Set(keys.compactMap { Int($0.split(separator: "/").last ?? "") }.filter { $0 < message.receiveCount }))
    }
}

extension MessageProcessor {
    /// On the store itself, not the watched one: a note that cannot be written or read falls back to counting
    /// receives, and is nobody's dead end (nor does a note that works vouch for the failure records).
    var releaseNotes: ReleaseNotes<Store> {
        ReleaseNotes(
            store: store.base, bucket: config.outputBucket,
            prefix: OutputContract.releaseNotesPrefix(outputPrefix: config.outputPrefix))
    }

    /// The runs `message` had before this receive, read only when that could matter (from its last attempt on).
    /// Nil when they cannot be counted now: no verdict on the message may rest on that.
    ///
    /// Without a ledger: its earlier receives less those noted as unrun (`ReleaseNotes`): a run that failed, and one
    /// whose daemon died with it, count; so does one that worked but whose delete was lost. With a ledger, only the
    /// runs that failed count: each earlier receive not noted as unrun is looked up in the ledger's task items of the
    /// message's inputs, and counts when one of them failed, is still `running` (its daemon died with it), or has no
    /// item (the write was lost: counted, to be safe); a receive whose items are all `done` or `released` does not.
    func runsBefore(_ message: SQSMessage, inputs: [S3URI] = [], logger: Logger) async -> Int? {
        let earlier = max(0, message.receiveCount - 1)
        guard message.receiveCount >= config.maxAttempts else { return earlier }
        let released: Set<Int>
        switch await releaseNotes.releasesBefore(message, logger: logger) {
        case .released(let noted): released = noted
        case .unreadable: released = []
        case .notNow: return nil
        }
        let unnoted = (1..<max(1, message.receiveCount)).filter { !released.contains($0) }
        guard let ledger, !inputs.isEmpty, !unnoted.isEmpty else { return unnoted.count }
        var states: [Int: [(state: String, instance: String?, started: Double?)]] = [:]
        var live: [String: Double]?
        do {
            for input in inputs {
                for found in try await ledger.attempts(inputKey: input.key, messageID: message.messageID) {
                    states[found.attempt, default: []].append((found.state, found.instance, found.started))
                }
            }
            // A run still `running` may be under way elsewhere (SQS delivered the message twice): not a dead one.
            if states.values.contains(where: { $0.contains { $0.state == "running" } }) {
                live = try await ledger.liveDaemons()
            }
        } catch  where error.isRetryable {
            logger.warning("cannot read this message's runs in the ledger now", metadata: ["error": "\(error)"])
            return nil
        } catch {
            // The ledger is the record, not the truth: unread, every unnoted receive counts.
            logger.warning(
                "cannot read this message's runs in the ledger; every receive not noted as unrun counts",
                metadata: ["error": "\(error)"])
            return unnoted.count
        }
        if let live,
            unnoted.contains(where: { receive in
                states[receive]?.contains { item in
                    guard item.state == "running", let instance = item.instance, let since = live[instance] else {
                        return false
                    }
                    // Started by the daemon that beats there now, not by one that died before it.
                    return (item.started ?? 0) >= since
                } == true
            })
        {
            logger.notice("an earlier receive of this message is still running on a live worker: back later")
            return nil
        }
        return unnoted.filter { receive in
            guard let seen = states[receive], seen.count >= inputs.count else { return true }
            return seen.contains { $0.state == "failed" || $0.state == "running" }
        }.count
    }
}
