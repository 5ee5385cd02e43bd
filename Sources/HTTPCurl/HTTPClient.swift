import Dispatch
import Synchronization

/// An HTTP client over libcurl easy handles.
///
/// `curl_easy_perform` blocks, and blocking Swift's cooperative pool (two threads here) starves every other task,
/// so each handle lives on its own serial dispatch queue (a thread outside the pool). Idle handles are pooled and
/// handed out last-in-first-out, so a worker slot that makes one request after another keeps reusing the same
/// handle, and with it the same kept-alive connection.
public final class HTTPClient: Sendable {
    public struct Configuration: Sendable {
        /// `AWS_CA_BUNDLE`: a PEM file of extra trusted CAs. Verification itself is always on.
        public var caBundle: String?
        public var userAgent: String
        /// Idle handles kept for reuse; more may exist while requests run concurrently.
        public var maxIdleHandles: Int

        public init(caBundle: String? = nil, userAgent: String = "parallelizer", maxIdleHandles: Int = 16) {
            self.caBundle = caBundle
            self.userAgent = userAgent
            self.maxIdleHandles = maxIdleHandles
        }
    }

    public let configuration: Configuration
    private let idle = Mutex<[CurlSession]>([])

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
    }

    /// libcurl's version string, for `parallelizer version`.
    public static var curlVersion: String { CurlGlobal.version }

    /// Sends `request` and waits for the whole response. Task cancellation aborts the transfer.
    public func execute(_ request: HTTPRequest) async throws(HTTPTransportError) -> HTTPResponse {
        let session: CurlSession
        if let pooled = idle.withLock({ $0.popLast() }) {
            session = pooled
        } else {
            session = try CurlSession(configuration: configuration)
        }
        let state = TransferState()
        let result: Result<HTTPResponse, HTTPTransportError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                session.queue.async {
                    do throws(HTTPTransportError) {
                        continuation.resume(returning: .success(try session.easy.perform(request, state: state)))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
        } onCancel: {
            state.cancelled.store(true, ordering: .relaxed)
        }
        idle.withLock { pool in
            if pool.count < configuration.maxIdleHandles { pool.append(session) }
        }
        return try result.get()
    }
}

/// One easy handle and the serial queue it is confined to.
final class CurlSession: @unchecked Sendable {
    let queue: DispatchQueue
    /// Touched only on `queue`.
    let easy: CurlEasy

    init(configuration: HTTPClient.Configuration) throws(HTTPTransportError) {
        queue = DispatchQueue(label: "parallelizer.curl")
        easy = try CurlEasy(caBundle: configuration.caBundle, userAgent: configuration.userAgent)
    }
}
