package dev.mdexport.core

import org.junit.Assert.assertEquals
import org.junit.Test

class ImageTest {
    @Test fun nchwToArgb() {
        // 1x3x2x2: R plane, G plane, B plane
        val data = floatArrayOf(
            -1f, 1f, 0f, 2f,          // R
            1f, -1f, 0f, -3f,         // G
            0f, 0f, 0.5f, Float.NaN,  // B
        )
        val img = Images.toArgb(FloatTensor(intArrayOf(1, 3, 2, 2), data))
        assertEquals(2, img.width)
        assertEquals(2, img.height)
        assertEquals(0xFF00FF80.toInt(), img.pixels[0]) // r 0, g 255, b round(127.5) = 128 (half to even)
        assertEquals(0xFFFF0080.toInt(), img.pixels[1])
        assertEquals(0xFF8080BF.toInt(), img.pixels[2]) // 0.5 -> 0.75 * 255 = 191.25 -> 191
        assertEquals(0xFFFF0000.toInt(), img.pixels[3]) // clamped; NaN -> 0
    }

    @Test(expected = IllegalArgumentException::class)
    fun rejectsNonImageShapes() {
        Images.toArgb(FloatTensor(1, 4, 2, 2))
    }
}
