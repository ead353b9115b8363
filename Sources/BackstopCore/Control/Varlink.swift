import Foundation

/// The Varlink wire format (varlink.org, "Protocol"): one JSON object per message,
/// each terminated by a NUL byte, over a stream socket.
public enum Varlink {
    /// The largest message either side accepts, in bytes.
    public static let maximumMessageBytes = 1 << 20

    /// A call: `{"method": "iface.Method", "parameters": {...}, "oneway": true?}`.
    public struct Call: Sendable {
        /// The qualified method name, e.g. `io.backstop.Manager.GetStatus`.
        public var method: String
        /// The `parameters` object re-encoded as JSON (`{}` when absent).
        public var parameters: Data
        /// The caller wants no reply.
        public var oneway: Bool

        /// Decodes one message without its NUL.
        /// - Throws: ``Varlink/ProtocolError`` when it is not a JSON object with a string `method`.
        public static func decode(_ message: Data) throws(ProtocolError) -> Call {
            guard let object = try? JSONSerialization.jsonObject(with: message) as? [String: Any],
                let method = object["method"] as? String
            else { throw ProtocolError(message: "a call must be a JSON object with a string \"method\"") }
            let parameters = object["parameters"] ?? [String: Any]()
            guard JSONSerialization.isValidJSONObject(parameters) && parameters is [String: Any],
                let encoded = try? JSONSerialization.data(withJSONObject: parameters)
            else { throw ProtocolError(message: "\"parameters\" must be a JSON object") }
            return Call(method: method, parameters: encoded, oneway: object["oneway"] as? Bool ?? false)
        }

        /// Encodes a call with typed parameters, NUL included.
        /// - Throws: the encoder's error.
        public static func encode(method: String, parameters: some Encodable) throws -> Data {
            var message = Data("{\"method\":\(try jsonString(method)),\"parameters\":".utf8)
            message.append(try JSONEncoder.backstop.encode(parameters))
            message.append(contentsOf: Array("}".utf8) + [0])
            return message
        }
    }

    /// A reply: parameters, or an error with a qualified name.
    public enum Reply: Sendable {
        case parameters(Data)
        case error(name: String, parameters: Data)

        /// The reply as a message, NUL included.
        public var encoded: Data {
            var message: Data
            switch self {
            case .parameters(let parameters):
                message = Data("{\"parameters\":".utf8)
                message.append(parameters)
            case .error(let name, let parameters):
                message = Data("{\"error\":\((try? jsonString(name)) ?? "\"\"") ,\"parameters\":".utf8)
                message.append(parameters)
            }
            message.append(contentsOf: Array("}".utf8) + [0])
            return message
        }

        /// Decodes a reply without its NUL.
        /// - Throws: ``Varlink/ProtocolError`` when it is not a reply object.
        public static func decode(_ message: Data) throws(ProtocolError) -> Reply {
            guard let object = try? JSONSerialization.jsonObject(with: message) as? [String: Any] else {
                throw ProtocolError(message: "a reply must be a JSON object")
            }
            let parameters = (try? JSONSerialization.data(withJSONObject: object["parameters"] ?? [String: Any]())) ?? Data("{}".utf8)
            if let name = object["error"] as? String { return .error(name: name, parameters: parameters) }
            return .parameters(parameters)
        }

        /// A reply carrying `value` as its parameters.
        public static func of(_ value: some Encodable) -> Reply {
            .parameters((try? JSONEncoder.backstop.encode(value)) ?? Data("{}".utf8))
        }

        /// An error reply with `parameters` given as string fields.
        public static func failure(_ name: String, _ parameters: [String: String] = [:]) -> Reply {
            .error(name: name, parameters: (try? JSONEncoder.backstop.encode(parameters)) ?? Data("{}".utf8))
        }
    }

    /// A message that breaks the protocol.
    public struct ProtocolError: Error, Equatable, CustomStringConvertible {
        /// What is wrong with the message, one sentence.
        public var message: String
        /// The ``message``.
        public var description: String { message }
    }

    /// An error reply received by a client.
    public struct RemoteError: Error, CustomStringConvertible {
        /// The qualified error name, e.g. `io.backstop.Manager.NoSuchAgent`.
        public var name: String
        /// The error's parameters as JSON.
        public var parameters: Data

        /// The `message` parameter when present, else the error name.
        public var description: String {
            let object = (try? JSONSerialization.jsonObject(with: parameters)) as? [String: Any]
            return (object?["message"] as? String) ?? name
        }
    }

    static func jsonString(_ value: String) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }
}
