import Foundation

public enum ImageConversionError: Error, Equatable, LocalizedError {
    case unexpectedShape([Int])

    public var errorDescription: String? {
        switch self {
        case let .unexpectedShape(shape):
            return "expected an image tensor [1, 3, H, W] or [3, H, W], got \(shape)"
        }
    }
}

/// 8-bit RGBA pixels, row-major, top row first, alpha 255.
public struct RGBAImage: Equatable {
    public let width: Int
    public let height: Int
    public let pixels: [UInt8]
}

public enum ImageConversion {
    /// The decoder's `image` (NCHW, values in [-1, 1]) to RGBA bytes, as diffusers does it:
    /// `round(clamp(x / 2 + 0.5, 0, 1) * 255)` (round half to even, NaN becomes 0).
    public static func rgba(fromNCHW image: Tensor) throws -> RGBAImage {
        let shape = image.shape
        let height: Int
        let width: Int
        if shape.count == 4, shape[0] == 1, shape[1] == 3 {
            height = shape[2]
            width = shape[3]
        } else if shape.count == 3, shape[0] == 3 {
            height = shape[1]
            width = shape[2]
        } else {
            throw ImageConversionError.unexpectedShape(shape)
        }
        let plane = height * width
        var pixels = [UInt8](repeating: 255, count: plane * 4)
        for channel in 0 ..< 3 {
            let base = channel * plane
            for i in 0 ..< plane {
                pixels[i * 4 + channel] = byte(image.scalars[base + i])
            }
        }
        return RGBAImage(width: width, height: height, pixels: pixels)
    }

    static func byte(_ value: Float) -> UInt8 {
        if value.isNaN { return 0 }
        let unit = min(max(value / 2 + 0.5, 0), 1)
        return UInt8((unit * 255).rounded(.toNearestOrEven))
    }
}
